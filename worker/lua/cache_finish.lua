-- worker.calls.cache: a call's end: a succeeded call's answer stored, the lock dropped (if this
-- holder still has it), the waiters woken ('kept' or 'released').
-- KEYS: entry, lock
-- ARGV: token, answer JSON ('' none: the call failed), cost ('' unknown), TTL s, channel
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'answer', ARGV[2], 'cost', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[5], ARGV[2] ~= '' and 'kept' or 'released')
return 1
