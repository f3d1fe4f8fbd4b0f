-- renew_owner: extend the owner key's TTL, only while the caller still holds it.
--
-- An expired or taken key is not recreated: the caller has lost the socket's ownership and
-- should close it. Who else could have won: a newer connection (set_owner) or the expiry.
--
-- KEYS[1] owner    socket owner (string, PX); value = channel name
-- ARGV[1] channel
-- ARGV[2] ttl_ms
-- RETURN {RENEWED, channel}    still the owner, TTL extended
-- RETURN {NOT_OWNER, current}  the key is absent ('') or held by current
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'RENEWED', current}
end
return {'NOT_OWNER', current or ''}
