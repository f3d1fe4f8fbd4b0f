-- instance_register: mark a scheduler instance alive for ttl_ms (register and renew).
--
-- Only the instance itself writes its key, so the write is unconditional; the reply says
-- whether the key had lapsed, since peers may then have treated the instance as dead.
--
-- KEYS[1] presence  instance presence (string, PX)
-- ARGV[1] value     what the key holds (the instance's start time, epoch ms)
-- ARGV[2] ttl_ms
-- RETURN {REGISTERED, ''}       the key was absent (first registration, or it had lapsed)
-- RETURN {RENEWED, previous}    the key was alive and is extended
local previous = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
if previous then
  return {'RENEWED', previous}
end
return {'REGISTERED', ''}
