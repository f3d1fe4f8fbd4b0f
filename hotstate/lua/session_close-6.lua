-- session_close: the owning socket closed; keep the session resumable for ttl_ms.
--
-- Compare-and-set on the owner. Who else could have won: a resume on another socket (it took
-- the owner key; this close changes nothing).
--
-- KEYS[1] record     session record (hash: tenant, created_ms, closed_ms; PX = resume TTL)
-- KEYS[2] owner      session socket owner (string, PX); value = channel
-- KEYS[3] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[4] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[5] expected   results owed to the session (zset job_id -> next check ms)
-- KEYS[6] requests   request id of each expected result (hash job_id -> request_id)
-- ARGV[1] channel    the closing socket's channel
-- ARGV[2] ttl_ms
-- RETURN {CLOSED, channel}     closed; results keep arriving in the outbox
-- RETURN {NOT_OWNER, current}  another socket owns the session ('' if none); unchanged
local current = redis.call('GET', KEYS[2])
if current ~= ARGV[1] then
  return {'NOT_OWNER', current or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'closed_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[5], ARGV[2])
redis.call('PEXPIRE', KEYS[6], ARGV[2])
return {'CLOSED', ARGV[1]}
