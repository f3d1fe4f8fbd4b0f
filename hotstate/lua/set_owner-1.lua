-- set_owner: record the channel that now holds a node's or session's socket.
--
-- The newest connection wins unconditionally; the previous holder is returned so the caller can
-- close that socket (4409). Who else could have won: an older connection that renews or clears
-- afterwards; both are compare-and-set and fail against the new value.
--
-- KEYS[1] owner    socket owner (string, PX); value = channel name
-- ARGV[1] channel
-- ARGV[2] ttl_ms
-- RETURN {OWNED, previous}  previous holder's channel, or '' (it may equal channel)
local previous = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
return {'OWNED', previous or ''}
