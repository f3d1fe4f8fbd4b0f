-- node_enlist: put a node in its directory shard, stamped with this shard's clock.
--
-- Runs before every node_publish, so each present node is in the directory. The stamp lets
-- node_directory_prune remove an entry only if no registration happened since it looked. Who else
-- could have won: a pruner that read the old stamp; after this its compare-and-set fails.
--
-- KEYS[1] directory  node directory shard (zset node_id -> last registration, epoch ms)
-- ARGV[1] node_id
-- RETURN {ENLISTED, stamp_ms}  the node's entry now carries stamp_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {'ENLISTED', now}
