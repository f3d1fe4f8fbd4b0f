--[[
claim_pending: take over the entries of a normal channel that other consumers read and never
acknowledged (they died), drop those delivered too often, and forget consumers that hold nothing.

KEYS[1]  stream of the channel
KEYS[2]  counter of the channel's dead letters (entries dropped after too many deliveries)
ARGV[1]  consumer group
ARGV[2]  the claiming consumer
ARGV[3]  min idle time in milliseconds: an entry pending this long has a dead consumer
ARGV[4]  most entries to claim (XAUTOCLAIM COUNT)
ARGV[5]  most deliveries: a claimed entry delivered more often than this is a dead letter
ARGV[6]  TTL of the dead-letter counter in milliseconds

Returns {dead, entries}:
  dead     number of entries dropped as dead letters (acknowledged, deleted and counted)
  entries  the claimed entries to deliver, each {id, {field, value, ...}}, now pending for
           the claiming consumer
]]

local group = ARGV[1]
local me = ARGV[2]
local min_idle = tonumber(ARGV[3])
local max_deliveries = tonumber(ARGV[5])

-- Entries whose message was trimmed meanwhile are removed from the pending list by XAUTOCLAIM
-- itself (its third reply), so nothing stays pending for ever.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], group, me, min_idle, '0-0', 'COUNT', ARGV[4])
local live = {}
local dead = 0
for _, entry in ipairs(claimed[2]) do
  local id = entry[1]
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  local deliveries = 0
  if pending[1] then
    deliveries = tonumber(pending[1][4])
  end
  if deliveries > max_deliveries then
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
    dead = dead + 1
  else
    live[#live + 1] = entry
  end
end
if dead > 0 then
  redis.call('INCRBY', KEYS[2], dead)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end

-- A consumer name is kept by the group until deleted: forget those idle past the bound with
-- nothing pending (a later read under the same name creates it again).
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['name'] ~= me and info['pending'] == 0 and info['idle'] > min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, info['name'])
  end
end
return {dead, live}
