-- slot_release: free a job's slot on a node, for one attempt. Idempotent: a second release
-- frees nothing.
--
-- A sorted-set member is removed at most once, so the count can never go negative. The slot is
-- freed only if it is held for this attempt or an older one: a job that failed over and came
-- back to the same node holds its slot for the newer attempt, which the older attempt's owed
-- release (done late, by a node's socket or the sweep) must not free. Who else could have won:
-- another path freeing the same job (result, cancel, timeout, failover); the first removes it,
-- the others get NOT_HELD. An expired reservation is also NOT_HELD.
--
-- KEYS[1] reservations  node reservations (zset job_id -> expiry, epoch ms)
-- KEYS[2] holders       attempt holding each reservation (hash job_id -> attempt)
-- ARGV[1] job_id
-- ARGV[2] attempt       the attempt whose slot is freed
-- RETURN {RELEASED, live}  the job's slot is free; live = live reservations left
-- RETURN {NOT_HELD, live}  the job held no live slot here, or holds it for a newer attempt
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or 0)
local released = false
if holder <= tonumber(ARGV[2]) then
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
  released = expiry ~= false and tonumber(expiry) > now
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local live = redis.call('ZCARD', KEYS[1])
if released then
  return {'RELEASED', live}
end
return {'NOT_HELD', live}
