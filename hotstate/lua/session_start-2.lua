-- session_start: create a new session and make channel its owner.
--
-- Session ids are random; EXISTS only guards against a collision (the caller draws another id).
-- Who else could have won: nobody else knows a fresh id.
--
-- KEYS[1] record   session record (hash: tenant, created_ms, closed_ms; PX = resume TTL)
-- KEYS[2] owner    session socket owner (string, PX); value = channel
-- ARGV[1] tenant
-- ARGV[2] channel
-- ARGV[3] ttl_ms   SESSION_RESUME_TTL: how long the session outlives its last renewal
-- RETURN {OPENED, ''}  the session exists, owned by channel
-- RETURN {EXISTS, ''}  the id is taken; nothing changed
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'EXISTS', ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'created_ms', now, 'closed_ms', '')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'OPENED', ''}
