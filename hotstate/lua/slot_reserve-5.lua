-- slot_reserve: take one of a node's max_jobs slots for a job, if the node can take it now.
--
-- The authority on capacity: the caller's snapshot only ranks candidates. Steps: (1) the node
-- must be present; (2) expired reservations are pruned; (3) a job that already holds a slot
-- keeps it (idempotent by job id; its expiry is extended, and a newer attempt of the job takes
-- the hold over, so the older attempt's owed release frees nothing); (4) the node must not be
-- drained,
-- must serve the service, its live reservations must be below max_jobs, and it must not be
-- marked unavailable for the service (id or id@version). Expiries use this shard's clock (TIME), never the
-- caller's, so instances with skewed clocks cannot prune each other's live reservations. Who
-- else could have won: every instance reserving on this node at once; each call sees the
-- count the previous one left, so the count never passes max_jobs.
--
-- KEYS[1] presence       node presence (string, PX)
-- KEYS[2] caps           node capabilities (hash: max_jobs, drained, svc:<id>, ...)
-- KEYS[3] reservations   node reservations (zset job_id -> expiry, epoch ms)
-- KEYS[4] unavailable    node unavailable marks (zset mark -> expiry, epoch ms)
-- KEYS[5] holders        attempt holding each reservation (hash job_id -> attempt)
-- ARGV[1] job_id
-- ARGV[2] ttl_ms          the reservation frees itself after this unless renewed
-- ARGV[3] service_field   caps field of the service (svc:<id>); '' to skip the check
-- ARGV[4] mark_any        unavailable mark of the service (any version)
-- ARGV[5] mark_version    unavailable mark of the service at its version, or ''
-- ARGV[6] attempt         the job's attempt this reservation is for
-- RETURN {RESERVED, live}     a slot is now held; live = live reservations including it
-- RETURN {HELD, live}         the job already held a slot here; expiry extended, held by the
--                             newer of the two attempts
-- RETURN {NOT_PRESENT, live}  the node is offline
-- RETURN {DRAINED, live}      the node takes no new jobs
-- RETURN {NOT_SERVED, live}   the node does not offer the service
-- RETURN {UNAVAILABLE, live}  the node is marked unavailable for the service
-- RETURN {FULL, live}         live reservations already equal max_jobs
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOT_PRESENT', 0}
end
-- ARGV[3] may be '': HMGET then reads a field that never exists, and the check is skipped.
local caps = redis.call('HMGET', KEYS[2], 'max_jobs', 'drained', ARGV[3])
if not caps[1] then
  return {'NOT_PRESENT', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('HDEL', KEYS[5], unpack(expired))
end
local live = redis.call('ZCARD', KEYS[3])
-- Add first (expired members are pruned above, so 0 means a live hold by this job) and take
-- the reservation back below on a refusal; the script is atomic, so nobody sees it meanwhile.
if redis.call('ZADD', KEYS[3], 'NX', now + ttl, ARGV[1]) == 0 then
  redis.call('ZADD', KEYS[3], 'XX', 'GT', now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ttl, 'GT')
  if tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or 0) < tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[5], ARGV[1], ARGV[6])
  end
  redis.call('PEXPIRE', KEYS[5], redis.call('PTTL', KEYS[3]))
  return {'HELD', live}
end
local refusal
if caps[2] == '1' then
  refusal = 'DRAINED'
elseif ARGV[3] ~= '' and not caps[3] then
  refusal = 'NOT_SERVED'
elseif live >= tonumber(caps[1]) then
  refusal = 'FULL'
else
  local marks = redis.call('ZMSCORE', KEYS[4], ARGV[4], ARGV[5] ~= '' and ARGV[5] or ARGV[4])
  if (marks[1] and tonumber(marks[1]) > now) or (marks[2] and tonumber(marks[2]) > now) then
    refusal = 'UNAVAILABLE'
  end
end
if refusal then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {refusal, live}
end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[6])
-- A set that was empty has no TTL yet; otherwise only ever extend it (GT). The holders live
-- as long as the reservations.
if live == 0 then
  redis.call('PEXPIRE', KEYS[3], ttl)
else
  redis.call('PEXPIRE', KEYS[3], ttl, 'GT')
end
redis.call('PEXPIRE', KEYS[5], redis.call('PTTL', KEYS[3]))
return {'RESERVED', live + 1}
