-- worker.process.wake, a part of the scripts that make a job due: `wake(key)` leaves one token on
-- the queue's wake list, for an idle worker blocked on it. Needs the constant TOKEN_TTL_MS.
-- (LPUSH then LTRIM, not LLEN first: a blocked worker is handed the token when the script ends.)
local function wake(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
  redis.call('PEXPIRE', key, TOKEN_TTL_MS)
end
