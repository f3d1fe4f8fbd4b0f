-- reserve_slot: take one of a node's max_jobs slots for a job, if the node can take it now.
--
-- The authority on capacity: the caller's snapshot only ranks candidates. Steps: (1) the node
-- must be present; (2) expired reservations are pruned; (3) a job that already holds a slot
-- keeps it (idempotent by job id; its expiry is extended); (4) the node must not be drained,
-- must serve the service and must not be marked unavailable for it (id or id@version); (5) the
-- live reservations must be below max_jobs. Expiries use this shard's clock (TIME), never the
-- caller's, so instances with skewed clocks cannot prune each other's live reservations. Who
-- else could have won: every instance reserving on this node at once; each call sees the
-- count the previous one left, so the count never passes max_jobs.
--
-- KEYS[1] presence       node presence (string, PX)
-- KEYS[2] caps           node capabilities (hash: max_jobs, drained, svc:<id>, ...)
-- KEYS[3] reservations   node reservations (zset job_id -> expiry, epoch ms)
-- KEYS[4] unavailable    node unavailable marks (zset mark -> expiry, epoch ms)
-- ARGV[1] job_id
-- ARGV[2] ttl_ms          the reservation frees itself after this unless renewed
-- ARGV[3] service_field   caps field of the service (svc:<id>); '' to skip the check
-- ARGV[4] mark_any        unavailable mark of the service (any version)
-- ARGV[5] mark_version    unavailable mark of the service at its version, or ''
-- RETURN {RESERVED, live}     a slot is now held; live = live reservations including it
-- RETURN {HELD, live}         the job already held a slot here; expiry extended
-- RETURN {NOT_PRESENT, live}  the node is offline
-- RETURN {DRAINED, live}      the node takes no new jobs
-- RETURN {NOT_SERVED, live}   the node does not offer the service
-- RETURN {UNAVAILABLE, live}  the node is marked unavailable for the service
-- RETURN {FULL, live}         live reservations already equal max_jobs
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOT_PRESENT', 0}
end
local caps = redis.call('HMGET', KEYS[2], 'max_jobs', 'drained')
if not caps[1] then
  return {'NOT_PRESENT', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local live = redis.call('ZCARD', KEYS[3])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZADD', KEYS[3], 'GT', now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[3]) < ttl then
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
  return {'HELD', live}
end
if caps[2] == '1' then
  return {'DRAINED', live}
end
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then
  return {'NOT_SERVED', live}
end
local mark = redis.call('ZSCORE', KEYS[4], ARGV[4])
if not mark and ARGV[5] ~= '' then
  mark = redis.call('ZSCORE', KEYS[4], ARGV[5])
end
if mark and tonumber(mark) > now then
  return {'UNAVAILABLE', live}
end
if live >= tonumber(caps[1]) then
  return {'FULL', live}
end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[3]) < ttl then
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {'RESERVED', live + 1}
