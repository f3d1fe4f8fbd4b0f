-- session_result_put: store a job's final result frame in a session's outbox, once.
--
-- HSETNX: a result is stored at most once per (session, job), and a taken result (tombstone
-- '') is never stored again, so a repeated delivery cannot reach the session twice. Who else
-- could have won: a second delivery of the same result; it gets EXISTS.
--
-- KEYS[1] record   session record (hash; its TTL is the session's remaining life)
-- KEYS[2] outbox   results awaiting delivery (hash job_id -> frame; '' once taken)
-- ARGV[1] job_id
-- ARGV[2] frame    the job_result frame (JSON)
-- RETURN {STORED, job_id}  stored; the session's socket (now or after resume) takes it
-- RETURN {EXISTS, job_id}  already stored or taken before; unchanged
-- RETURN {GONE, ''}        the session expired: nobody can receive it
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  return {'GONE', ''}
end
local stored = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
if stored == 1 then
  return {'STORED', ARGV[1]}
end
return {'EXISTS', ARGV[1]}
