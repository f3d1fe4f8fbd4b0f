-- session_result_forgo: make sure a session never gets a job's result (its submit was answered
-- job_rejected, though Redis may have created and placed the job).
--
-- Leaves a tombstone, as a take does, so that no later put stores the result (the job's own
-- delivery, a sweep's check of an expectation recorded late); drops the expectation and a
-- result already waiting. Order-free: a late expectation finds the tombstone, and a late put
-- is refused by it. Who else could have won: a put of the result or an expectation whose
-- command a stalled primary ran late; either is undone or refused here.
--
-- KEYS[1] record     session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[3] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[4] expected   results owed to the session (zset job_id -> next check ms)
-- KEYS[5] requests   request id of each expected result (hash job_id -> request_id)
-- ARGV[1] job_id
-- RETURN {SETTLED, job_id}  the session will not get the job's result
-- RETURN {GONE, ''}         the session expired: nobody can receive it anyway
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  return {'GONE', ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return {'SETTLED', ARGV[1]}
