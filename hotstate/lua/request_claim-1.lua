-- request_claim: bind a tenant's request id to a job id, once, for the length of a lease.
--
-- The first caller binds its candidate job id; every later caller within the lease gets the
-- job that won, wherever it runs. Who else could have won: any instance handling a retry of the
-- same request id; SET NX decides, and the loser adopts the winner's job id.
--
-- KEYS[1] binding  request binding (string, PX = lease); value = job_id
-- ARGV[1] job_id   the caller's candidate job id
-- ARGV[2] lease_ms how long the binding lasts
-- RETURN {CLAIMED, job_id}   the candidate is now bound
-- RETURN {EXISTING, job_id}  the request was already bound to job_id (a retry)
local bound = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if bound then
  return {'EXISTING', bound}
end
return {'CLAIMED', ARGV[1]}
