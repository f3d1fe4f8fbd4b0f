-- session_renew: extend an open session's keys while channel owns it.
--
-- Who else could have won: a resume on another socket; then this socket has been replaced and
-- should close.
--
-- KEYS[1] record     session record (hash: tenant, created_ms, closed_ms; PX = resume TTL)
-- KEYS[2] owner      session socket owner (string, PX); value = channel
-- KEYS[3] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[4] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[5] expected   results owed to the session (zset job_id -> next check ms)
-- KEYS[6] requests   request id of each expected result (hash job_id -> request_id)
-- ARGV[1] channel
-- ARGV[2] ttl_ms
-- RETURN {RENEWED, channel}    still the owner
-- RETURN {NOT_OWNER, current}  another socket owns the session ('' if none)
local current = redis.call('GET', KEYS[2])
if current ~= ARGV[1] then
  return {'NOT_OWNER', current or ''}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[5], ARGV[2])
redis.call('PEXPIRE', KEYS[6], ARGV[2])
return {'RENEWED', current}
