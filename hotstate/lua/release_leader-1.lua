-- release_leader: free the duty lock, only by its holder.
--
-- Who else could have won: another process that acquired after our lock expired; its lock
-- stays.
--
-- KEYS[1] lock     leader lock of the duty (string, PX); value = holder token
-- ARGV[1] token
-- RETURN {RELEASED, token}     freed
-- RETURN {NOT_OWNER, holder}   free ('') or held by another process; unchanged
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'RELEASED', holder}
end
return {'NOT_OWNER', holder or ''}
