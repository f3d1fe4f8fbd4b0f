-- timers_claim: take up to limit due timers of a shard, each for a lease.
--
-- A claimed timer is pushed to now_ms + lease_ms, not removed: if the claimer dies before it
-- re-arms or disarms the job, the timer fires again after the lease. Who else could have won:
-- every instance claiming this shard at once; each due timer goes to the first claim only.
--
-- KEYS[1] timers    job timer shard (zset job_id -> due, epoch ms)
-- ARGV[1] now_ms    the caller's clock (the same clock family that armed the timers)
-- ARGV[2] limit
-- ARGV[3] lease_ms
-- RETURN {CLAIMED, job_id...}  the due job ids now leased to the caller
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, job in ipairs(due) do
  redis.call('ZADD', KEYS[1], until_ms, job)
end
local reply = {'CLAIMED'}
for _, job in ipairs(due) do
  reply[#reply + 1] = job
end
return reply
