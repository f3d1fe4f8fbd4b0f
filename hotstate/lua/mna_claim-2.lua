-- mna_claim: take over reports another reader left pending too long; dead-letter hopeless ones.
--
-- Part of a worker's turn (stream shard). A report stays pending while its reader handles it;
-- one idle longer than min_idle_ms belongs to a reader that died or whose handling failed.
-- XAUTOCLAIM gives such reports to the caller (each delivery counts one more), scanning the
-- pending list from the caller's cursor, at most count per call. A report delivered more than
-- max_deliveries times is acknowledged and counted in the shard's dead-letter counter instead of
-- being handed out again, so a report that always fails cannot cycle forever. Reports trimmed
-- from the stream while pending leave the pending list here (XAUTOCLAIM) and are only counted in
-- the reply. Who else could have won: another worker claiming the same shard at once; a claim
-- resets the idle time, so each report goes to one of them.
--
-- KEYS[1] stream          MNA stream shard
-- KEYS[2] dead            the shard's dead-letter counter (string, no TTL)
-- ARGV[1] group
-- ARGV[2] consumer        the caller's reader name
-- ARGV[3] min_idle_ms
-- ARGV[4] cursor          where the caller's scan of the pending list goes on ('0-0': start)
-- ARGV[5] count           at most this many reports per call
-- ARGV[6] max_deliveries
-- RETURN {CLAIMED, next_cursor, dead_ids, trimmed, entries}  entries: {id, {field, value...}}
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', ARGV[5])
local limit = tonumber(ARGV[6])
local entries = {}
local dead = {}
for _, entry in ipairs(reply[2]) do
  if type(entry) == 'table' then
    local id = entry[1]
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local deliveries = pending[1] and tonumber(pending[1][4]) or 0
    if deliveries > limit then
      redis.call('XACK', KEYS[1], ARGV[1], id)
      dead[#dead + 1] = id
    else
      entries[#entries + 1] = entry
    end
  end
end
if #dead > 0 then
  redis.call('INCRBY', KEYS[2], #dead)
end
local trimmed = 0
if reply[3] then
  trimmed = #reply[3]
end
return {'CLAIMED', reply[1], dead, trimmed, entries}
