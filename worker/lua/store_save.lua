-- worker.contract.store: the result, after the part outbox_queue_delivery (worker.outputs.outbox).
-- The result, its dead letter if any, the dead-letter list kept within its bounds (oldest
-- first: past DLQ_TTL_S, then over DLQ_MAX; at most 100 a call), its webhook delivery if it has
-- a callback_url (worker.outputs.outbox), the job in the recent-jobs streams (every source's, and its
-- source's if it has one: XADD with MAXLEN ~ and EXPIRE, in this script, so no command or round
-- trip of its own), and the wake-up: one round trip.
-- KEYS: result, dlq hash, dlq index, webhook outbox, webhook delivery, then the recent-jobs streams
-- ARGV: result JSON, result TTL s, status, dead letter JSON ('' none), now s, dlq max, dlq TTL s, job id, channel,
--       callback url ('' none), delivery, recent-jobs max, listed status, model, cost, source
-- the same result stored already (a result's JSON is its run's: its times, its calls' ids): this
-- call ran before and its answer was lost, so the client sent it again (worker.process.scripts).
-- Nothing more to do: a second stream entry, done message or webhook delivery would be a copy.
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[10] ~= '' then queue_delivery(KEYS[4], KEYS[5], ARGV[11], ARGV[10], ARGV[5], ARGV[2]) end
local dropped = {}
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[8], ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
  dropped = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[5]) - tonumber(ARGV[7]), 'LIMIT', 0, 100)
  local over = redis.call('ZCARD', KEYS[3]) - #dropped - tonumber(ARGV[6])
  if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], #dropped, #dropped + math.min(over, 100) - 1)) do
      table.insert(dropped, id)
    end
  end
  for _, id in ipairs(dropped) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
for i = 6, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[12], '*',
    'id', ARGV[8], 'status', ARGV[13], 'model', ARGV[14], 'cost', ARGV[15], 'source', ARGV[16])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
redis.call('PUBLISH', ARGV[9], ARGV[3])
return #dropped
