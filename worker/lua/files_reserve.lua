-- producers.files: reserve room for `chunk` more bytes of an upload in progress (its first call,
-- `start` 1, reserves the file itself), next to the owner's kept files and its other uploads in
-- progress, and renew the upload's lease. A lapsed lease's reservation is dropped (its room
-- returned). {1, files, bytes} reserved, {0, ...} one file too many, {-1, ...} too many bytes,
-- {-2, ...} this upload's lease lapsed; `files` and `bytes` count the kept files and the uploads in
-- progress.
-- KEYS: the owner's list, its uploads in progress; ARGV: the record key prefix, max files, max
-- bytes, upload id, chunk bytes, now ms, lease ms, start.

-- the files the owner keeps (those whose record expired are dropped from its list)
local files, bytes = 0, 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local size = redis.call('HGET', ARGV[1] .. id, 'bytes')
  if size then
    files = files + 1
    bytes = bytes + tonumber(size)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end

local now = tonumber(ARGV[6])
local mine, found, live, reserved = 0, false, 0, 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local size, ends = string.match(entries[i + 1], '^(%d+):(%d+)$')
  if not size or tonumber(ends) < now then
    redis.call('HDEL', KEYS[2], entries[i])
  elseif entries[i] == ARGV[4] then
    mine, found = tonumber(size), true
  else
    live, reserved = live + 1, reserved + tonumber(size)
  end
end
files, bytes = files + live, bytes + reserved
if not found and ARGV[8] ~= '1' then return {-2, files, bytes} end
if files + 1 > tonumber(ARGV[2]) then return {0, files, bytes} end
local want = mine + tonumber(ARGV[5])
if bytes + want > tonumber(ARGV[3]) then return {-1, files, bytes} end
redis.call('HSET', KEYS[2], ARGV[4], string.format('%d:%d', want, now + tonumber(ARGV[7])))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return {1, files + 1, bytes + want}
