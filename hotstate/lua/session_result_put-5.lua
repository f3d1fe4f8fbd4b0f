-- session_result_put: store a job's final result frame in a session's outbox, once.
--
-- A result is stored at most once per (session, job): not while it waits in the outbox, and
-- not after it was taken while its tombstone lasts (see hotstate.sessions for how long), so a
-- repeated delivery cannot reach the session twice. Storing (or finding) the result settles
-- the job's expectation. Who else could have won: a second delivery of the same result (the
-- job's follow-ups redone, or the session's own sweep); it gets EXISTS.
--
-- KEYS[1] record     session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[3] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[4] expected   results owed to the session (zset job_id -> next check ms)
-- KEYS[5] requests   request id of each expected result (hash job_id -> request_id)
-- ARGV[1] job_id
-- ARGV[2] frame      the job_result frame (JSON)
-- RETURN {STORED, job_id}  stored; the session's socket (now or after resume) takes it
-- RETURN {EXISTS, job_id}  waiting or taken before; unchanged
-- RETURN {GONE, ''}        the session expired: nobody can receive it
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  return {'GONE', ''}
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {'EXISTS', ARGV[1]}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return {'STORED', ARGV[1]}
