-- mna_debounce: decide which report of a (service, version) runs the expensive action.
--
-- Step 2 of the worker's handling. The first report in a window wins; every other report in
-- the window is debounced. Who else could have won: any worker handling a report of the same
-- (service, version) from any node; SET NX decides.
--
-- KEYS[1] debounce   MNA debounce of the (service, version) (string, PX = window)
-- ARGV[1] window_ms
-- ARGV[2] token      identifies the winner (e.g. the stream entry id)
-- RETURN {WON, token}        run the action
-- RETURN {DEBOUNCED, token}  another report won this window; token is the winner's
local winner = redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[1], 'GET')
if winner then
  return {'DEBOUNCED', winner}
end
return {'WON', ARGV[2]}
