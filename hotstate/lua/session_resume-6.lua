-- session_resume: reopen a session of the same tenant that is open or closed within its TTL.
--
-- The resuming socket takes the owner key unconditionally (the newest connection wins); the
-- previous holder is returned so the caller can close it with 4409. Who else could have won:
-- the old socket closing (session_close is a compare-and-set and fails against the new owner)
-- or another resume of the same id (the later one wins and closes this one).
--
-- KEYS[1] record     session record (hash: tenant, created_ms, closed_ms; PX = resume TTL)
-- KEYS[2] owner      session socket owner (string, PX); value = channel
-- KEYS[3] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[4] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[5] expected   results owed to the session (zset job_id -> next check ms)
-- KEYS[6] requests   request id of each expected result (hash job_id -> request_id)
-- ARGV[1] tenant     the resuming socket's tenant
-- ARGV[2] channel
-- ARGV[3] ttl_ms
-- RETURN {RESUMED, previous}  resumed; previous owner channel or ''
-- RETURN {UNKNOWN, ''}        no such session within its TTL, or another tenant's
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if not tenant or tenant ~= ARGV[1] then
  return {'UNKNOWN', ''}
end
local previous = redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'GET')
redis.call('HSET', KEYS[1], 'closed_ms', '')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[3])
redis.call('PEXPIRE', KEYS[6], ARGV[3])
return {'RESUMED', previous or ''}
