-- worker.outputs.events: one write: the entries, the stream's TTL and the wake-up, in one command (a
-- pipeline of three commands costs the worker about twice the CPU per write). Each entry carries its
-- write's id (`w`: run.sequence): a write sent again by the client after a lost answer
-- (worker.contract.connections) finds its id on the stream's last entry and adds nothing.
-- KEYS: stream; ARGV: maxlen, TTL s, channel, write id, then event name and data JSON for each entry
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  for i = 1, #last[2], 2 do
    if last[2][i] == 'w' and last[2][i + 1] == ARGV[4] then return 0 end
  end
end
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i], 'data', ARGV[i + 1], 'w', ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[#ARGV - 1])
