-- node_heartbeat: keep a node present, record its load, renew its running jobs' reservations.
--
-- Compare-and-set on the presence holder. Only reservations that still exist are renewed: a
-- slot that was released (cancel, result) or expired is not brought back by a late heartbeat,
-- so a heartbeat never takes a slot that slot_reserve did not grant. Who else could have won:
-- a newer connection of the node (NOT_OWNER), a release of a job listed as running (it stays
-- released).
--
-- KEYS[1] presence            node presence (string, PX); value = owning channel
-- KEYS[2] caps                node capabilities and load (hash)
-- KEYS[3] reservations        node reservations (zset job_id -> expiry, epoch ms)
-- KEYS[4] holders             attempt holding each reservation (hash job_id -> attempt)
-- ARGV[1] channel             channel of the consumer holding the node's socket
-- ARGV[2] presence_ttl_ms
-- ARGV[3] caps_ttl_ms
-- ARGV[4] reservation_ttl_ms
-- ARGV[5] cpu_pct
-- ARGV[6] gpu_pct             or ''
-- ARGV[7] mem_pct
-- ARGV[8..] running           job ids the node reports running
-- RETURN {OK, renewed, live}  renewed = reservations renewed, live = live reservations
-- RETURN {NOT_PRESENT, 0, 0}  presence or capabilities expired: publish the node again
-- RETURN {NOT_OWNER, 0, 0}    a newer connection holds the node
local holder = redis.call('GET', KEYS[1])
if not holder or redis.call('EXISTS', KEYS[2]) == 0 then
  return {'NOT_PRESENT', 0, 0}
end
if holder ~= ARGV[1] then
  return {'NOT_OWNER', 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'cpu_pct', ARGV[5], 'gpu_pct', ARGV[6], 'mem_pct', ARGV[7],
  'updated_ms', now)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('HDEL', KEYS[4], unpack(expired))
end
local ttl = tonumber(ARGV[4])
local renewed = 0
for i = 8, #ARGV do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    redis.call('ZADD', KEYS[3], 'XX', now + ttl, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 and redis.call('PTTL', KEYS[3]) < ttl then
  redis.call('PEXPIRE', KEYS[3], ttl)
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[4], redis.call('PTTL', KEYS[3]))
end
return {'OK', renewed, redis.call('ZCARD', KEYS[3])}
