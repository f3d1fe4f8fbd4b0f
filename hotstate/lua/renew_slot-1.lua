-- renew_slot: extend the reservations of running jobs on a node.
--
-- Only live reservations are renewed; an expired or released one stays free. Who else could
-- have won: a release of the same job just before (then it is not renewed).
--
-- KEYS[1] reservations  node reservations (zset job_id -> expiry, epoch ms)
-- ARGV[1] ttl_ms        new lifetime from now
-- ARGV[2..] job_ids
-- RETURN {RENEWED, count}  count reservations renewed
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 and redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {'RENEWED', renewed}
