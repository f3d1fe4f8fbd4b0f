-- session_result_take: take a stored result frame out of a session's outbox, exactly once.
--
-- The frame leaves the outbox and a tombstone (job_id -> now) takes its place, so a late
-- repeat of session_result_put cannot store it again. Tombstones older than keep_ms are pruned
-- here, and past max_taken the oldest go first, so the set stays bounded for a session that
-- lives for days. Who else could have won: two sockets of the session (old and resumed), or a
-- notice and the sweep, taking at once; one gets the frame, the others EMPTY.
--
-- KEYS[1] record     session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox     results awaiting delivery (hash job_id -> frame; '' = a tombstone of old)
-- KEYS[3] taken      tombstones of delivered results (zset job_id -> taken ms)
-- ARGV[1] job_id
-- ARGV[2] keep_ms    how long a tombstone lasts at least
-- ARGV[3] max_taken  how many tombstones a session keeps at most
-- RETURN {TAKEN, frame}  send this frame
-- RETURN {EMPTY, ''}     nothing to send (never stored, or already taken)
local frame = redis.call('HGET', KEYS[2], ARGV[1])
if not frame then
  return {'EMPTY', ''}
end
redis.call('HDEL', KEYS[2], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[2])))
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[3])
if extra > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1)
end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('PEXPIRE', KEYS[3], ttl > 0 and ttl or tonumber(ARGV[2]))
if frame == '' then
  -- A tombstone kept in the outbox by an earlier version: it has just moved to KEYS[3].
  return {'EMPTY', ''}
end
return {'TAKEN', frame}
