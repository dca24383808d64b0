-- worker.calls.cache: a lookup. A hit adds the answer's original cost to the day's savings; a miss
-- takes the lock if it is free. Answers {'hit', answer, cost}, {'lead', '', ''} or {'wait', lock's
-- ms left, ''}.
-- KEYS: entry, lock, saved-per-day hash (by model), saved-per-day hash by source and model
-- ARGV: token, lock ms, day TTL s, model, <source>|<model>
local entry = redis.call('HMGET', KEYS[1], 'answer', 'cost')
if entry[1] then
  if entry[2] and entry[2] ~= '' then
    redis.call('HINCRBYFLOAT', KEYS[3], ARGV[4], entry[2])
    redis.call('EXPIRE', KEYS[3], ARGV[3])
    redis.call('HINCRBYFLOAT', KEYS[4], ARGV[5], entry[2])
    redis.call('EXPIRE', KEYS[4], ARGV[3])
  end
  return {'hit', entry[1], entry[2] or ''}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'lead', '', ''} end
-- the lock is this caller's own (a token is one call's): this lookup ran before and its answer was
-- lost, so the client sent it again (worker.process.scripts); it leads, not waits on itself
if redis.call('GET', KEYS[2]) == ARGV[1] then return {'lead', '', ''} end
return {'wait', tostring(redis.call('PTTL', KEYS[2])), ''}
