-- node_drain: set or clear a present node's drained flag (drained: no new reservations).
--
-- Who else could have won: a newer connection of the node, when the request names a channel.
--
-- KEYS[1] presence  node presence (string, PX); value = owning channel
-- KEYS[2] caps      node capabilities and load (hash)
-- ARGV[1] channel   the requesting connection's channel; '' for an operator (any holder)
-- ARGV[2] drained   '1' to drain, '0' to undrain
-- RETURN {UPDATED, drained}    the flag is now drained
-- RETURN {NOT_PRESENT, ''}     the node is offline
-- RETURN {NOT_OWNER, current}  a newer connection holds the node; nothing changed
local holder = redis.call('GET', KEYS[1])
if not holder or redis.call('EXISTS', KEYS[2]) == 0 then
  return {'NOT_PRESENT', ''}
end
if ARGV[1] ~= '' and holder ~= ARGV[1] then
  return {'NOT_OWNER', holder}
end
redis.call('HSET', KEYS[2], 'drained', ARGV[2])
return {'UPDATED', ARGV[2]}
