-- session_result_return: put back a frame that was taken but could not be sent.
--
-- The socket closed between session_result_take and the send (the client went away); the
-- frame goes back into the outbox and its tombstone is removed, so the next socket of the
-- session (a resume, on any instance) sends it. Who else could have won: nobody; the frame was
-- this caller's alone since its take, and HSETNX keeps a newer copy if one arrived.
--
-- KEYS[1] record     session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox     results awaiting delivery (hash job_id -> frame)
-- KEYS[3] taken      tombstones of delivered results (zset job_id -> taken ms)
-- ARGV[1] job_id
-- ARGV[2] frame      the frame session_result_take returned
-- RETURN {STORED, job_id}  back in the outbox
-- RETURN {GONE, ''}        the session expired: nobody can receive it
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  return {'GONE', ''}
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return {'STORED', ARGV[1]}
