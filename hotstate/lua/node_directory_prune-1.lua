-- node_directory_prune: drop directory entries of gone nodes, compare-and-set on the stamp.
--
-- The caller saw these nodes without presence. An entry goes only if its stamp is still the one
-- the caller saw and older than the horizon. Who else could have won: the node registering again
-- (node_enlist wrote a newer stamp first, so the entry stays).
--
-- KEYS[1] directory   node directory shard (zset node_id -> last registration, epoch ms)
-- ARGV[1] horizon_ms  keep entries stamped within this many ms
-- ARGV[2..] entries   node_id, stamp_ms pairs as the caller read them
-- RETURN {PRUNED, count}  count entries removed
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = now - tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV, 2 do
  local stamp = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if stamp and tonumber(stamp) == tonumber(ARGV[i + 1]) and tonumber(stamp) < oldest then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return {'PRUNED', removed}
