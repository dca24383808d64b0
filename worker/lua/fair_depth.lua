-- worker.limits.fair: what waits and runs, by source: for each source with jobs waiting (and each
-- named in ARGV), its name, jobs waiting, the score of its front job (-1: none) and jobs running now.
-- KEYS: passes; ARGV: now ms, waiting prefix, running prefix, then source names to report always
local seen, out = {}, {}
local names = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 4, #ARGV do table.insert(names, ARGV[i]) end
for _, name in ipairs(names) do
  if not seen[name] then
    seen[name] = true
    local w, r = ARGV[2] .. name, ARGV[3] .. name
    local front = redis.call('ZRANGE', w, 0, 0, 'WITHSCORES')
    table.insert(out, name)
    table.insert(out, redis.call('ZCARD', w))
    table.insert(out, front[2] or '-1')
    table.insert(out, redis.call('ZCOUNT', r, ARGV[1], '+inf'))
  end
end
return out
