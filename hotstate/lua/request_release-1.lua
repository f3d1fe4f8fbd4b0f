-- request_release: unbind a request id, only by the job it is bound to.
--
-- Used when a request is rejected after its claim, so that a retry is judged afresh. Who else
-- could have won: a claim after our lease expired, which bound the request to another job;
-- then the binding is not ours and stays.
--
-- KEYS[1] binding  request binding (string); value = job_id
-- ARGV[1] job_id   the job that believes it holds the binding
-- RETURN {RELEASED, job_id}   the binding was ours and is gone
-- RETURN {NOT_BOUND, current} the binding is absent ('') or held by another job (current)
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'RELEASED', ARGV[1]}
end
return {'NOT_BOUND', current or ''}
