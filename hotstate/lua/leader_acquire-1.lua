-- leader_acquire: take the lock of a periodic duty if it is free (or already ours).
--
-- Who else could have won: every process trying the same duty at once; SET NX decides and the
-- others get BUSY with the holder's token.
--
-- KEYS[1] lock     leader lock of the duty (string, PX); value = holder token
-- ARGV[1] token    unique to the acquiring process
-- ARGV[2] ttl_ms
-- RETURN {ACQUIRED, token}  the caller leads (newly, or again with its TTL extended)
-- RETURN {BUSY, holder}     another process leads
local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not holder then
  return {'ACQUIRED', ARGV[1]}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ACQUIRED', ARGV[1]}
end
return {'BUSY', holder}
