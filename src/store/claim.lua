-- Claims event ids against duplicates, for one shard of claim buckets, atomically.
--
-- A claim is a hash field (the event id) in the bucket of its event's day, valued with the
-- claimant's `partition:offset`. The same message replayed after a crash finds its own value
-- and is new again; a re-send (another offset) finds another value and is a duplicate.
-- Existing claims are read with one HMGET and new ones written with one HSET per bucket, so
-- Redis parses, executes and logs to its AOF a few large commands, not one per event.
--
-- KEYS: the buckets. ARGV[1]: horizon in seconds; then per bucket: n, then n pairs (id, value).
-- Returns one character per claim, in argument order: '1' new, '0' duplicate.
local CHUNK = 2000 -- unpack() in Redis's Lua takes at most about 8000 values
local horizon = tonumber(ARGV[1])
local out = {}
local i = 2
for k = 1, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[i])
  i = i + 1
  if redis.call('EXISTS', key) == 0 then
    -- Hash-table encoding from the start: see apply.lua.
    redis.call('HSET', key, '~', string.rep('~', 80))
  end
  local ids = {}
  for j = 1, n do
    ids[j] = ARGV[i + 2 * (j - 1)]
  end
  local have = {}
  for s = 1, n, CHUNK do
    local got = redis.call('HMGET', key, unpack(ids, s, math.min(s + CHUNK - 1, n)))
    for j = 1, #got do
      have[s + j - 1] = got[j]
    end
  end
  local mine = {} -- claims made by this call, so a repeat inside the batch is caught
  local new = {}
  for j = 1, n do
    local id, value = ids[j], ARGV[i + 2 * (j - 1) + 1]
    local owner = mine[id] or have[j]
    if not owner then
      mine[id] = value
      new[#new + 1] = id
      new[#new + 1] = value
      out[#out + 1] = '1'
    elseif owner == value then
      out[#out + 1] = '1'
    else
      out[#out + 1] = '0'
    end
  end
  for s = 1, #new, 2 * CHUNK do
    redis.call('HSET', key, unpack(new, s, math.min(s + 2 * CHUNK - 1, #new)))
  end
  if redis.call('TTL', key) < horizon then
    redis.call('EXPIRE', key, horizon)
  end
  i = i + 2 * n
end
return table.concat(out)
