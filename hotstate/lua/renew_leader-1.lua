-- renew_leader: extend the duty lock's TTL, only while the caller still holds it.
--
-- A lost lock is not retaken here: the caller must stop the duty and acquire again. Who else
-- could have won: another process that acquired after the lock expired.
--
-- KEYS[1] lock     leader lock of the duty (string, PX); value = holder token
-- ARGV[1] token
-- ARGV[2] ttl_ms
-- RETURN {RENEWED, token}  still the leader
-- RETURN {LOST, holder}    the lock is free ('') or held by another process
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'RENEWED', holder}
end
return {'LOST', holder or ''}
