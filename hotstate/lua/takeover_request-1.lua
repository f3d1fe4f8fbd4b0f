-- takeover_request: rebind a request from one job to another (the explicit failover path).
--
-- Compare-and-set on the old job id: only a caller that knows which job holds the binding can
-- move it. Who else could have won: another failover of the same job (it rebound first, so the
-- binding is no longer the old job) or the old job's own release (the binding is gone).
--
-- KEYS[1] binding     request binding (string, PX = lease); value = job_id
-- ARGV[1] old_job_id  the job expected to hold the binding
-- ARGV[2] new_job_id  the job to bind instead
-- ARGV[3] lease_ms    the new binding's lease
-- RETURN {TAKEN_OVER, new_job_id}  rebound now, or already bound to new_job_id (a retry)
-- RETURN {NOT_BOUND, current}      the binding is absent ('') or held by a third job (current)
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {'TAKEN_OVER', ARGV[2]}
end
return {'NOT_BOUND', current or ''}
