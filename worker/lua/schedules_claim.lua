-- worker.batches.schedules: renew a tick's claim still held by `token`; delete it if ARGV[2] is
-- 'release'. 0: not held by `token`.
-- KEYS: claim; ARGV: token, 'renew'|'release', lease ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[3])
