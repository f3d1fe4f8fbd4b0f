-- session_outbox_sweep: one bounded look at a session's outbox and its expected results.
--
-- Returns up to pending_limit job ids whose results wait in the outbox (a sample: each taken
-- result leaves the outbox, so repeated sweeps reach them all), and up to due_limit expected
-- results whose check is due, each moved recheck_ms into the future so that the next sweeps
-- check the others first. Reads nothing unbounded. Who else could have won: another sweep of
-- the same session (an old and a resumed socket); both may check a job, and every action a
-- check leads to (session_result_put) is idempotent.
--
-- KEYS[1] outbox      results awaiting delivery (hash job_id -> frame)
-- KEYS[2] expected    results owed to the session (zset job_id -> next check ms)
-- KEYS[3] requests    request id of each expected result (hash job_id -> request_id)
-- ARGV[1] pending_limit
-- ARGV[2] due_limit
-- ARGV[3] recheck_ms
-- RETURN {OK, n, job_id * n, (job_id, request_id) * due}  n pending ids, then the due pairs
local pending = redis.call('HRANDFIELD', KEYS[1], tonumber(ARGV[1]))
local reply = {'OK', #pending}
for _, job_id in ipairs(pending) do
  reply[#reply + 1] = job_id
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, job_id in ipairs(due) do
  redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[3]), job_id)
  reply[#reply + 1] = job_id
  reply[#reply + 1] = redis.call('HGET', KEYS[3], job_id) or ''
end
return reply
