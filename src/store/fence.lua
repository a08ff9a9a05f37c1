-- Checks, ahead of a transaction that adds a batch's counters as plain commands, that each
-- partition's stored offset is the one the caller expects (see `Store::apply_watched`). The
-- caller has WATCHed every key here. On a mismatch this touches the last key, which makes
-- Redis drop the transaction: EXEC answers nil and nothing of the batch is written.
--
-- Anything it cannot read counts as a mismatch: if this script failed instead, the
-- transaction would run unchecked, and Redis does not roll back the counters of a
-- transaction whose apply script fails.
--
-- It also checks, when given, the token the batch's claim call set (see claim.lua): gone, Redis
-- lost the claims (a restart, a cut AOF) after they were answered, so the answers may be stale.
--
-- KEYS: the partitions' offset keys, then the claim token if any, then the key to touch. ARGV:
-- the expected offsets, in the same order (-1 for none). Returns 1 if every offset is as
-- expected, 0 if one is not, -1 if the token is gone.
local touch = KEYS[#KEYS]
local function abort(code)
  redis.call('SET', touch, '1')
  redis.call('DEL', touch)
  return code
end
if #KEYS == #ARGV + 2 and redis.call('EXISTS', KEYS[#KEYS - 1]) == 0 then
  return abort(-1)
end
for k = 1, #ARGV do
  local stored = redis.pcall('GET', KEYS[k])
  if type(stored) == 'table' or tonumber(stored or '-1') ~= tonumber(ARGV[k]) then
    return abort(0)
  end
end
return 1
