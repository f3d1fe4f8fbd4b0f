-- job_subscribe: add a session to the job's subscribers and say where the job stands.
--
-- Atomic with the terminal transition (same slot): a session subscribed before it is in the
-- subscriber list that transition hands out; a session subscribing after it sees the terminal
-- state here, and its caller delivers the stored result. Who else could have won: the node's
-- final report, a cancel or a timeout racing with this subscription.
--
-- KEYS[1] record       job record (hash)
-- KEYS[2] subscribers  sessions awaiting the result (set)
-- ARGV[1] tenant       the subscribing session's tenant
-- ARGV[2] session_id
-- RETURN {SUBSCRIBED, state, attempt, node_id}  subscribed (again, harmlessly, if it was)
-- RETURN {NOT_FOUND, '', 0, ''}                 no such job, or another tenant's
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'node_id', 'tenant')
if not cur[1] or cur[4] ~= ARGV[1] then
  return {'NOT_FOUND', '', 0, ''}
end
redis.call('SADD', KEYS[2], ARGV[2])
return {'SUBSCRIBED', cur[1], tonumber(cur[2]), cur[3]}
