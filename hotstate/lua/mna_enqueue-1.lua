-- mna_enqueue: append a MODEL_NOT_AVAILABLE report to its stream shard for the workers.
--
-- The socket handler only enqueues; marking, rate limiting and debouncing happen in the worker.
-- The stream is capped (approximate MAXLEN), so a flood cannot grow it without bound. Who else
-- could have won: nothing to win; appends from every instance are ordered by the stream.
--
-- KEYS[1] stream  MNA stream shard
-- ARGV[1] maxlen  approximate cap on the stream's length
-- ARGV[2..] fields  field, value pairs of the event
-- RETURN {QUEUED, entry_id}  the event's stream entry id
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
return {'QUEUED', id}
