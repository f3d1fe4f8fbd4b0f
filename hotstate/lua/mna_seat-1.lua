-- mna_seat: give a worker a numbered reader seat of an MNA group: its stable consumer name.
--
-- A worker's consumer name is its seat's, not its random process id, so a group keeps at most
-- `seats` consumers however often workers restart, and a restarted worker usually sits where a
-- dead one sat. The caller keeps its seat by calling again before ttl_ms runs out; a seat whose
-- holder stopped calling is free again after ttl_ms. Who else could have won: workers taking
-- seats at once; the hash is read and written in one commit, so a seat has one holder.
--
-- KEYS[1] seats   the group's seats (hash: h<n> -> holder token, e<n> -> expiry, epoch ms)
-- ARGV[1] holder  the caller's token (unique per process)
-- ARGV[2] ttl_ms
-- ARGV[3] seats   how many seats there are
-- RETURN {ACQUIRED, seat}  the caller holds seat number `seat` until now + ttl_ms
-- RETURN {BUSY, seats}     every seat is held by a live worker
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local flat = redis.call('HGETALL', KEYS[1])
local fields = {}
for i = 1, #flat, 2 do
  fields[flat[i]] = flat[i + 1]
end
local free = nil
for n = 0, tonumber(ARGV[3]) - 1 do
  local holder = fields['h' .. n]
  if holder == ARGV[1] then
    redis.call('HSET', KEYS[1], 'e' .. n, now + ttl)
    return {'ACQUIRED', n}
  end
  if free == nil and (holder == nil or tonumber(fields['e' .. n] or '0') <= now) then
    free = n
  end
end
if free == nil then
  return {'BUSY', tonumber(ARGV[3])}
end
redis.call('HSET', KEYS[1], 'h' .. free, ARGV[1], 'e' .. free, now + ttl)
return {'ACQUIRED', free}
