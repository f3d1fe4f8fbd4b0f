-- timer_arm: (re)arm a job's timer to fire at due_ms.
--
-- The latest arm wins: a job has one next check. Who else could have won: a claim of the same
-- timer (it re-armed it at its lease's end); the arm after it sets the due time it wants.
--
-- KEYS[1] timers  job timer shard (zset job_id -> due, epoch ms)
-- ARGV[1] job_id
-- ARGV[2] due_ms
-- RETURN {ARMED, due_ms}  the timer fires at due_ms
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {'ARMED', tonumber(ARGV[2])}
