-- Checks, ahead of a transaction that adds a batch's counters as plain commands, that each
-- partition's stored offset is the one the caller expects (see `Store::apply_watched`). The
-- caller has WATCHed every key here. On a mismatch this touches the last key, which makes
-- Redis drop the transaction: EXEC answers nil and nothing of the batch is written.
--
-- Anything it cannot read counts as a mismatch: if this script failed instead, the
-- transaction would run unchecked, and Redis does not roll back the counters of a
-- transaction whose apply script fails.
--
-- KEYS: the partitions' offset keys, then the key to touch. ARGV: the expected offsets, in
-- the same order (-1 for none). Returns 1 if every offset is as expected, else 0.
for k = 1, #KEYS - 1 do
  local stored = redis.pcall('GET', KEYS[k])
  if type(stored) == 'table' or tonumber(stored or '-1') ~= tonumber(ARGV[k]) then
    redis.call('SET', KEYS[#KEYS], '1')
    redis.call('DEL', KEYS[#KEYS])
    return 0
  end
end
return 1
