-- job_settle: mark follow-ups of a job's move as done, and say how many are still owed.
--
-- job_transition records each follow-up it leaves owed as an 'owe:...' field of the record
-- (DESIGN.md, "Durability and recovery"); whoever did one deletes it here. A field is deleted
-- only if it still holds the value the doer saw, so a newer follow-up of the same name (a later
-- attempt on the same node) stays owed. Who else could have won: the winner of the move and the
-- timer sweep doing the same follow-ups at once; both are idempotent and either deletes.
--
-- KEYS[1] record      job record (hash)
-- ARGV[1..] done      pairs: field, the value it held when its follow-up was done
-- RETURN {SETTLED, owed}  owed = 'owe:' fields still on the record (0: nothing is owed)
-- RETURN {NOT_FOUND, '', 0, ''}  no such job (expired or lost)
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOT_FOUND', '', 0, ''}
end
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
local owed = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 4) == 'owe:' then
    owed = owed + 1
  end
end
return {'SETTLED', owed}
