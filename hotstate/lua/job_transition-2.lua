-- job_transition: move a job to a new state, compare-and-set on attempt, node and state.
--
-- Rules (anything else is BAD_STATE; terminal states are final):
--   CREATED    -> DISPATCHED | FAILED | CANCELLED | TIMED_OUT
--   DISPATCHED -> ACCEPTED | FINISHED | CREATED | FAILED | CANCELLED | TIMED_OUT
--   ACCEPTED   -> RUNNING | FINISHED | CREATED | FAILED | CANCELLED | TIMED_OUT
--   RUNNING    -> FINISHED | CREATED | FAILED | CANCELLED | TIMED_OUT
-- To CREATED is the failover: attempt + 1 and no node. To DISPATCHED assigns node_id. Every
-- other transition that names a node must come from the job's assigned node. Checks run in this
-- order: NOT_FOUND, STALE_ATTEMPT, FORBIDDEN, DUPLICATE, BAD_STATE. Who else could have won: the
-- node's own replies, the ack and job timeouts, a cancel and a failover, on any instance; all
-- of them pass through this script, so the first valid one moves the job and the others see
-- the new state or attempt.
--
-- A move away from a node (a failover, or an end) also records on the record what it leaves
-- owed, each as a field that its doer deletes when done (job_settle; DESIGN.md, "Durability and
-- recovery"): 'owe:rel:<node>' = attempt (give the node's slot back), 'owe:cancel:<node>' =
-- 'attempt:reason' (tell the node to stop: a failover, or an end the scheduler decided while the
-- node held the job) and, on an end, 'owe:deliver' = '1' (put the result in every subscriber's
-- outbox). Whoever wins the move does them; the timer sweep redoes what is left.
--
-- KEYS[1] record         job record (hash)
-- KEYS[2] subscribers    sessions awaiting the result (set)
-- ARGV[1] attempt        the attempt the caller acts on; must equal the job's
-- ARGV[2] to_state
-- ARGV[3] node_id        the node assigned (to DISPATCHED) or reporting; '' = scheduler
-- ARGV[4] from_states    comma-separated states the caller expects; '' = any the rules allow
-- ARGV[5..] outcome      terminal moves only: result (JSON or ''), error_code, error_message,
--                        deliver ('0': nobody is owed the result: a submit answered job_rejected)
-- RETURN {APPLIED, state, attempt, node_id, subscriber...}  moved; a terminal move lists the
--                                                           subscribers to deliver to
-- RETURN {DUPLICATE, state, attempt, node_id}      already in to_state for this attempt/node
-- RETURN {STALE_ATTEMPT, state, attempt, node_id}  attempt differs from the job's
-- RETURN {FORBIDDEN, state, attempt, node_id}      node_id is not the job's assigned node
-- RETURN {BAD_STATE, state, attempt, node_id}      not allowed from the current state
-- RETURN {NOT_FOUND, '', 0, ''}                    no such job
-- The rules above as 'FROM>TO' pairs; string lookups keep the script free of per-call tables.
local EDGES = ',CREATED>DISPATCHED,DISPATCHED>ACCEPTED,DISPATCHED>FINISHED,ACCEPTED>RUNNING,' ..
  'ACCEPTED>FINISHED,' ..
  'RUNNING>FINISHED,DISPATCHED>CREATED,ACCEPTED>CREATED,RUNNING>CREATED,' ..
  'CREATED>FAILED,CREATED>CANCELLED,CREATED>TIMED_OUT,DISPATCHED>FAILED,DISPATCHED>CANCELLED,' ..
  'DISPATCHED>TIMED_OUT,ACCEPTED>FAILED,ACCEPTED>CANCELLED,ACCEPTED>TIMED_OUT,' ..
  'RUNNING>FAILED,RUNNING>CANCELLED,RUNNING>TIMED_OUT,'
local TERMINAL = ',FINISHED,FAILED,CANCELLED,TIMED_OUT,'
-- The reasons a job_cancel frame may name (PROTOCOL.md); any other end is NODE_LOST to the node.
local CANCEL_REASONS = ',CANCELLED,JOB_TIMEOUT,NODE_LOST,'
local LOST_REASON = 'NODE_LOST'

local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'node_id')
local state, attempt, node = cur[1], tonumber(cur[2]), cur[3]
if not state then
  return {'NOT_FOUND', '', 0, ''}
end
local to, by = ARGV[2], ARGV[3]
if attempt ~= tonumber(ARGV[1]) then
  return {'STALE_ATTEMPT', state, attempt, node}
end
if by ~= '' and to ~= 'DISPATCHED' and by ~= node then
  return {'FORBIDDEN', state, attempt, node}
end
if state == to and to ~= 'CREATED' and (by == '' or by == node) then
  return {'DUPLICATE', state, attempt, node}
end
if ARGV[4] ~= '' and not string.find(',' .. ARGV[4] .. ',', ',' .. state .. ',', 1, true) then
  return {'BAD_STATE', state, attempt, node}
end
-- Terminal states have no outgoing edge, so they are final here too.
if not string.find(EDGES, ',' .. state .. '>' .. to .. ',', 1, true) then
  return {'BAD_STATE', state, attempt, node}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = node ~= '' and state ~= 'CREATED'
local terminal = string.find(TERMINAL, ',' .. to .. ',', 1, true)
local result, error_code, error_message, deliver = unpack(ARGV, 5)
if to == 'CREATED' then
  attempt = attempt + 1
  node = ''
elseif to == 'DISPATCHED' then
  node = by
end
redis.call('HSET', KEYS[1], 'state', to, 'attempt', attempt, 'node_id', node, 'updated_ms', now)
if held and (to == 'CREATED' or terminal) then
  redis.call('HSET', KEYS[1], 'owe:rel:' .. cur[3], ARGV[1])
  if by == '' then
    -- A node's own end needs no telling; a failover or the scheduler's end does.
    local reason = LOST_REASON
    if terminal and string.find(CANCEL_REASONS, ',' .. (error_code or '') .. ',', 1, true) then
      reason = error_code
    end
    redis.call('HSET', KEYS[1], 'owe:cancel:' .. cur[3], ARGV[1] .. ':' .. reason)
  end
end
local reply = {'APPLIED', to, attempt, node}
if terminal then
  redis.call('HSET', KEYS[1], 'result', result or '', 'error_code', error_code or '',
    'error_message', error_message or '', 'finished_ms', now)
  if deliver ~= '0' then
    redis.call('HSET', KEYS[1], 'owe:deliver', '1')
  end
  -- The subscribers read in this commit get the result from the caller's follow-ups; a
  -- session that subscribes later sees the terminal state and is served by its own caller.
  -- Both may happen (a follow-up redone by the sweep); the outbox stores a result once.
  for _, session in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    reply[#reply + 1] = session
  end
end
return reply
