-- Claims event ids against duplicates, for any number of claim buckets, atomically.
--
-- A claim is a hash field (the 14-byte digest of the event id) in the bucket of its shard and
-- event day, valued with the claimant's 12-byte `partition, offset`. The same message replayed
-- after a crash finds its own value and is new again; a re-send (another offset) finds another
-- value and is a duplicate. Existing claims are read with one HMGET and new ones written with
-- one HSET per bucket, so Redis parses, executes and logs to its AOF a few large commands.
--
-- Claims come packed, one string per bucket of 26-byte records (digest, then value): Redis
-- parses one argument per bucket instead of two per event, and a batch's claims fit one call,
-- so under `appendfsync always` they cost one fsync.
--
-- A bucket lives at least the horizon after its last claim, and at most an hour more.
--
-- KEYS: the buckets. ARGV[1]: horizon in seconds; ARGV[1 + k]: the claims of KEYS[k].
-- Returns one character per claim, in argument order: '1' new, '0' duplicate.
local CHUNK = 2000 -- unpack() in Redis's Lua takes at most about 8000 values
local SIZE, ID = 26, 14
local horizon = tonumber(ARGV[1])
local out = {}
for k = 1, #KEYS do
  local key, packed = KEYS[k], ARGV[1 + k]
  local n = #packed / SIZE
  local ttl = redis.call('TTL', key)
  if ttl == -2 then
    -- Hash-table encoding from the start: see apply.lua.
    redis.call('HSET', key, '~', string.rep('~', 80))
  end
  local ids, values = {}, {}
  for j = 1, n do
    local at = (j - 1) * SIZE
    ids[j] = string.sub(packed, at + 1, at + ID)
    values[j] = string.sub(packed, at + ID + 1, at + SIZE)
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
    local id, value = ids[j], values[j]
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
  if ttl < horizon then
    -- An hour over the horizon, so a bucket claimed all the time is not refreshed each call.
    redis.call('EXPIRE', key, horizon + 3600)
  end
end
return table.concat(out)
