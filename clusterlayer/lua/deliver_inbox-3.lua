--[[
deliver_inbox: append messages for process-local channels to one live process's inbox.

KEYS[1]  inbox stream of the process
KEYS[2]  alive key of the process (exists while it heartbeats)
KEYS[3]  set of the process's channels whose local queue is at capacity
ARGV[1]  approximate MAXLEN of the inbox
ARGV[2]  inbox capacity: the most undelivered entries the inbox may hold
ARGV[3]  message expiry in milliseconds: older entries are trimmed first
ARGV[4]  number of entries N; then per entry: channel count C, C channel names, payload

Returns one code per entry, in order:
  0  appended (to the channels of the entry that are not full)
  1  inbox full: the process reads too slowly; nothing appended
  2  process gone (no alive key): nothing appended
  3  every channel of the entry is full; nothing appended
]]

local n = tonumber(ARGV[4])
local codes = {}
-- PTTL answers both questions at once: is the process alive (-2: no key), and for how long.
local alive_ttl = redis.call('PTTL', KEYS[2])
if alive_ttl == -2 then
  for i = 1, n do
    codes[i] = 2
  end
  return codes
end

-- Entries older than the expiry would be dropped by the reader anyway; trimming them here
-- keeps a stalled reader's backlog from counting against the capacity.
local now = redis.call('TIME')
local oldest = (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) - tonumber(ARGV[3])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', oldest)
end

local maxlen = ARGV[1]
local capacity = tonumber(ARGV[2])
local backlog = redis.call('XLEN', KEYS[1])
local any_full = redis.call('SCARD', KEYS[3]) > 0
local pos = 5
for i = 1, n do
  local count = tonumber(ARGV[pos])
  local open = {}
  for j = 1, count do
    local channel = ARGV[pos + j]
    if not any_full or redis.call('SISMEMBER', KEYS[3], channel) == 0 then
      open[#open + 1] = channel
    end
  end
  local payload = ARGV[pos + count + 1]
  pos = pos + count + 2
  if backlog >= capacity then
    codes[i] = 1
  elseif #open == 0 then
    codes[i] = 3
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'c', table.concat(open, ' '), 'm', payload)
    backlog = backlog + 1
    codes[i] = 0
  end
end

-- An inbox deleted by a flush is recreated by XADD without a TTL: give it the process's.
if alive_ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], alive_ttl, 'NX')
end
return codes
