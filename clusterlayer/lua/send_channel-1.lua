--[[
send_channel: append messages to one normal (cross-process) channel, honouring its capacity.

KEYS[1]  stream of the channel
ARGV[1]  approximate MAXLEN of the stream
ARGV[2]  capacity of the channel: the most undelivered messages it may hold
ARGV[3]  message expiry in milliseconds: older entries are trimmed first, and the stream
         lives this long after the last send
ARGV[4..] payloads, one per message

Returns one code per payload, in order:
  0  appended
  1  channel full; nothing appended
]]

local now = redis.call('TIME')
local expiry = tonumber(ARGV[3])
local oldest = (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) - expiry
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', oldest)
end

local maxlen = ARGV[1]
local capacity = tonumber(ARGV[2])
local backlog = redis.call('XLEN', KEYS[1])
local codes = {}
for i = 4, #ARGV do
  if backlog >= capacity then
    codes[#codes + 1] = 1
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'm', ARGV[i])
    backlog = backlog + 1
    codes[#codes + 1] = 0
  end
end
if backlog > 0 then
  redis.call('PEXPIRE', KEYS[1], expiry)
end
return codes
