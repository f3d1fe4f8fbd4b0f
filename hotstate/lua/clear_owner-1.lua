-- clear_owner: delete the owner key when the socket closes, only by its current holder.
--
-- Who else could have won: a newer connection that already took the key; it stays.
--
-- KEYS[1] owner    socket owner (string, PX); value = channel name
-- ARGV[1] channel
-- RETURN {CLEARED, channel}    deleted
-- RETURN {NOT_OWNER, current}  the key is absent ('') or held by current; unchanged
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'CLEARED', current}
end
return {'NOT_OWNER', current or ''}
