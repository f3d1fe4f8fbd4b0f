-- job_create: create a job record in state CREATED, attempt 1, if it does not exist yet.
--
-- Idempotent by job id: every caller that holds the request's job id (the claim winner and any
-- retry that adopted it) may call it; the first creates, the others get EXISTS. Either way the
-- caller's session joins the subscriber set, so it receives the result. Who else could have
-- won: a retry of the same request on another instance; the EXISTS check and HSET are one step.
--
-- KEYS[1] record           job record (hash)
-- KEYS[2] subscribers      sessions awaiting the result (set)
-- ARGV[1] tenant
-- ARGV[2] request_id
-- ARGV[3] session_id       the submitting session; joins the subscribers
-- ARGV[4] service_id
-- ARGV[5] service_version  '' when the request names none
-- ARGV[6] features         JSON list of feature names
-- ARGV[7] payload          JSON object
-- ARGV[8] timeout_ms       the job ends TIMED_OUT at created_ms + timeout_ms
-- ARGV[9] retain_ms        lifetime of the record and subscriber set
-- RETURN {CREATED, state, attempt, node_id, deadline_ms}  created now
-- RETURN {EXISTS, state, attempt, node_id, deadline_ms}   existed; session subscribed
-- RETURN {FORBIDDEN, state, attempt, node_id, 0}          exists for another tenant
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'node_id', 'deadline_ms', 'tenant')
if cur[1] then
  if cur[5] ~= ARGV[1] then
    return {'FORBIDDEN', cur[1], tonumber(cur[2]), cur[3], 0}
  end
  redis.call('SADD', KEYS[2], ARGV[3])
  return {'EXISTS', cur[1], tonumber(cur[2]), cur[3], tonumber(cur[4])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[8])
redis.call('HSET', KEYS[1],
  'state', 'CREATED', 'attempt', 1, 'node_id', '',
  'tenant', ARGV[1], 'request_id', ARGV[2], 'session_id', ARGV[3],
  'service_id', ARGV[4], 'service_version', ARGV[5], 'features', ARGV[6], 'payload', ARGV[7],
  'timeout_ms', ARGV[8], 'deadline_ms', deadline, 'created_ms', now, 'updated_ms', now)
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
return {'CREATED', 'CREATED', 1, '', deadline}
