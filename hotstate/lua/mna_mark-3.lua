-- mna_mark: rate-limit a node's MODEL_NOT_AVAILABLE reports and mark it unavailable.
--
-- Step 1 of the worker's handling (node slot); step 2 is mna_debounce (service slot). A report
-- over the node's rate limit is dropped whole and counted. A kept report marks the node
-- unavailable for the service until now + mark_ttl_ms (the later expiry wins when marks
-- overlap); slot_reserve and selection honour the mark. Who else could have won: other workers
-- handling reports of the same node at once; INCR counts each report exactly once.
--
-- KEYS[1] unavailable     node unavailable marks (zset mark -> expiry, epoch ms)
-- KEYS[2] rate            node report counter of the current window (string, PX)
-- KEYS[3] dropped         node dropped-report counter (string, PX)
-- ARGV[1] mark            the service mark: id, or id@version
-- ARGV[2] mark_ttl_ms
-- ARGV[3] rate_limit      reports kept per window
-- ARGV[4] rate_window_ms
-- ARGV[5] dropped_ttl_ms  how long the dropped counter survives its last increment
-- RETURN {MARKED, expiry_ms}     the node is unavailable for the service until expiry_ms
-- RETURN {DROPPED, dropped}      over the rate limit; dropped = reports dropped so far
local count = redis.call('INCR', KEYS[2])
if count == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if count > tonumber(ARGV[3]) then
  local dropped = redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  return {'DROPPED', dropped}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], 'GT', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {'MARKED', tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))}
