-- timer_disarm: remove a job's timer (the job ended). Idempotent.
--
-- Who else could have won: a claimer that took the timer just before; it finds the job ended.
--
-- KEYS[1] timers  job timer shard (zset job_id -> due, epoch ms)
-- ARGV[1] job_id
-- RETURN {DISARMED, removed}  removed = 1 if a timer was armed, else 0
return {'DISARMED', redis.call('ZREM', KEYS[1], ARGV[1])}
