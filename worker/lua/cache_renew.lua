-- worker.calls.cache: the lock kept while its holder's call runs (1: renewed, 0: no longer held).
-- KEYS: lock; ARGV: token, lock ms
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
