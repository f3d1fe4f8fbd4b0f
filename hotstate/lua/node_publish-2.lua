-- node_publish: write a node's presence, capabilities and load.
--
-- Capabilities are flat hash fields with a digest: when the digest is unchanged only the load
-- fields are written. A register (new connection) takes the presence unconditionally, since the
-- newest connection of a node wins; an update is a compare-and-set on the presence holder. Who
-- else could have won: an older connection of the same node on another instance; after a
-- register its updates, heartbeats and removal get NOT_OWNER. The drained flag is set by a
-- register and kept across capability rewrites.
--
-- KEYS[1] presence         node presence (string, PX); value = owning channel
-- KEYS[2] caps             node capabilities and load (hash)
-- ARGV[1] channel          channel of the consumer holding the node's socket
-- ARGV[2] register         '1' for a new connection, '0' for an update by the holder
-- ARGV[3] drained          '1' or '0'; applied on register only
-- ARGV[4] presence_ttl_ms
-- ARGV[5] caps_ttl_ms
-- ARGV[6] digest           digest of the capability fields
-- ARGV[7] cpu_pct
-- ARGV[8] gpu_pct          or ''
-- ARGV[9] mem_pct
-- ARGV[10..] fields        capability field, value pairs
-- RETURN {CAPS_WRITTEN, previous}    capabilities rewritten; previous holder channel or ''
-- RETURN {CAPS_UNCHANGED, previous}  same digest: load only
-- RETURN {NOT_PRESENT, ''}           update of a node whose presence expired: register again
-- RETURN {NOT_OWNER, current}        update from a connection that no longer holds the node
local previous
if ARGV[2] == '1' then
  previous = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4], 'GET') or ''
else
  previous = redis.call('GET', KEYS[1])
  if not previous then
    return {'NOT_PRESENT', ''}
  end
  if previous ~= ARGV[1] then
    return {'NOT_OWNER', previous}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('HMGET', KEYS[2], 'digest', 'drained')
local drained = old[2] or '0'
if ARGV[2] == '1' then
  drained = ARGV[3]
end
local code = 'CAPS_UNCHANGED'
if old[1] ~= ARGV[6] then
  code = 'CAPS_WRITTEN'
  redis.call('DEL', KEYS[2])
  if #ARGV >= 10 then
    redis.call('HSET', KEYS[2], unpack(ARGV, 10))
  end
end
redis.call('HSET', KEYS[2], 'digest', ARGV[6], 'drained', drained, 'cpu_pct', ARGV[7],
  'gpu_pct', ARGV[8], 'mem_pct', ARGV[9], 'updated_ms', now)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {code, previous}
