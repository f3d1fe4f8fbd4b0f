-- node_remove: take a node offline when its socket closes, only by the connection holding it.
--
-- Reservations and unavailable marks stay: running jobs are failed over or finished by their
-- own paths, and leftovers expire. Who else could have won: a newer connection of the same node
-- (it re-registered elsewhere first; its presence stays).
--
-- KEYS[1] presence  node presence (string, PX); value = owning channel
-- KEYS[2] caps      node capabilities and load (hash)
-- ARGV[1] channel   channel of the consumer whose socket closed
-- RETURN {REMOVED, channel}    presence and capabilities deleted
-- RETURN {NOT_PRESENT, ''}     already offline
-- RETURN {NOT_OWNER, current}  a newer connection holds the node; nothing changed
local holder = redis.call('GET', KEYS[1])
if not holder then
  return {'NOT_PRESENT', ''}
end
if holder ~= ARGV[1] then
  return {'NOT_OWNER', holder}
end
redis.call('DEL', KEYS[1], KEYS[2])
return {'REMOVED', holder}
