-- session_result_expect: record that a job's result is owed to a session.
--
-- Called once the job is accepted for the session. The expectation lasts until the result is
-- stored (session_result_put settles it) or the session expires; until then the session's sweep
-- checks it from check_after_ms on, and answers JOB_LOST if the job's record vanished. A result
-- already stored or taken needs no expectation. Who else could have won: the job's own
-- delivery, when the job ended before this call; it stored the result first, so EXISTS.
--
-- KEYS[1] record     session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[3] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[4] expected   results owed to the session (zset job_id -> next check ms)
-- KEYS[5] requests   request id of each expected result (hash job_id -> request_id)
-- ARGV[1] job_id
-- ARGV[2] request_id
-- ARGV[3] check_after_ms  the first check is due this long from now
-- RETURN {STORED, job_id}  expected now
-- RETURN {EXISTS, job_id}  its result is stored or taken already; unchanged
-- RETURN {GONE, ''}        the session expired: nobody can receive it
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  return {'GONE', ''}
end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {'EXISTS', ARGV[1]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], 'NX', now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('PEXPIRE', KEYS[5], ttl)
return {'STORED', ARGV[1]}
