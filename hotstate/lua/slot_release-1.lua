-- slot_release: free a job's slot on a node. Idempotent: a second release frees nothing.
--
-- A sorted-set member is removed at most once, so the count can never go negative. Who else
-- could have won: another path freeing the same job (result, cancel, timeout, failover); the
-- first removes it, the others get NOT_HELD. An expired reservation is also NOT_HELD.
--
-- KEYS[1] reservations  node reservations (zset job_id -> expiry, epoch ms)
-- ARGV[1] job_id
-- RETURN {RELEASED, live}  the job's slot is free; live = live reservations left
-- RETURN {NOT_HELD, live}  the job held no live slot here
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
if expiry and tonumber(expiry) > now then
  return {'RELEASED', live}
end
return {'NOT_HELD', live}
