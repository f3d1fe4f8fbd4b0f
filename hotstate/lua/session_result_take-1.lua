-- session_result_take: take a stored result frame out of a session's outbox, exactly once.
--
-- The field stays as a tombstone ('') so a late repeat of session_result_put cannot store it again.
-- Who else could have won: two sockets of the session (old and resumed) taking at once; one
-- gets the frame, the other EMPTY.
--
-- KEYS[1] outbox  results awaiting delivery (hash job_id -> frame; '' once taken)
-- ARGV[1] job_id
-- RETURN {TAKEN, frame}  send this frame
-- RETURN {EMPTY, ''}     nothing to send (never stored, or already taken)
local frame = redis.call('HGET', KEYS[1], ARGV[1])
if frame and frame ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], '')
  return {'TAKEN', frame}
end
return {'EMPTY', ''}
