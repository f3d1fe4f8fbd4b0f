-- session_result_take: take a stored result frame out of a session's outbox, exactly once.
--
-- The frame leaves the outbox and a tombstone (job_id -> now) takes its place, so a late
-- repeat of session_result_put cannot store it again. Tombstones older than keep_ms are pruned
-- here, and past max_taken the oldest go first, so the set stays bounded for a session that
-- lives for days. Who else could have won: two sockets of the session (old and resumed), or a
-- notice and the sweep, taking at once; one gets the frame, the others EMPTY.
--
-- A take is idempotent for its taker: the frame is also kept in handed under the taker's
-- token for handed_ms, so a taker whose answer was lost (a timeout while the server was
-- frozen, the command run when it woke up) repeats the take with the same token and gets the
-- same frame; any other token gets EMPTY. Tokens are never reused for another take, so the
-- repeat cannot send a frame twice. Each call prunes a few copies older than handed_ms (and
-- the oldest past max_handed); both keys expire handed_ms after the last take.
--
-- KEYS[1] record     session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox     results awaiting delivery (hash job_id -> frame; '' = a tombstone of old)
-- KEYS[3] taken      tombstones of delivered results (zset job_id -> taken ms)
-- KEYS[4] handed     frames as handed over (hash job_id -> token .. '\n' .. frame)
-- KEYS[5] handed_at  when each was handed over (zset job_id -> taken ms)
-- ARGV[1] job_id
-- ARGV[2] token      the taker's token for this take (no newline; repeat it to take again)
-- ARGV[3] keep_ms    how long a tombstone lasts at least
-- ARGV[4] max_taken  how many tombstones a session keeps at most
-- ARGV[5] handed_ms  how long a handed-over frame can be taken again by its taker
-- ARGV[6] max_handed how many handed-over frames a session keeps at most
-- RETURN {TAKEN, frame}  send this frame (taken now, or again by the same token)
-- RETURN {EMPTY, ''}     nothing to send (never stored, or taken by another token)
local PRUNE_PER_CALL = 8
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local handed_ms = tonumber(ARGV[5])

-- Bounded work: at most PRUNE_PER_CALL copies older than handed_ms go here, and as many past
-- max_handed after a new copy is added. A take adds one copy, so this keeps up with any rate.
local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. (now - handed_ms), 'LIMIT', 0,
  PRUNE_PER_CALL)
if #old > 0 then
  redis.call('HDEL', KEYS[4], unpack(old))
  redis.call('ZREM', KEYS[5], unpack(old))
end

local mark = ARGV[2] .. '\n'
local frame = redis.call('HGET', KEYS[2], ARGV[1])
if not frame then
  local copy = redis.call('HGET', KEYS[4], ARGV[1])
  if copy and string.sub(copy, 1, #mark) == mark then
    return {'TAKEN', string.sub(copy, #mark + 1)}
  end
  return {'EMPTY', ''}
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[3])))
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
if extra > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1)
end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('PEXPIRE', KEYS[3], ttl > 0 and ttl or tonumber(ARGV[3]))
if frame == '' then
  -- A tombstone kept in the outbox by an earlier version: it has just moved to KEYS[3].
  return {'EMPTY', ''}
end
redis.call('HSET', KEYS[4], ARGV[1], mark .. frame)
redis.call('ZADD', KEYS[5], now, ARGV[1])
local over = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[6])
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[5], 0, math.min(over, PRUNE_PER_CALL) - 1)
  redis.call('HDEL', KEYS[4], unpack(oldest))
  redis.call('ZREM', KEYS[5], unpack(oldest))
end
redis.call('PEXPIRE', KEYS[4], handed_ms)
redis.call('PEXPIRE', KEYS[5], handed_ms)
return {'TAKEN', frame}
