-- Drop an item from the active set only if no gateway marked it during the
-- last ARGV[2] seconds: a gateway marks before it reserves, so a reserve the
-- reconciler did not see keeps the item in the set.
-- KEYS[1] active items; ARGV[1] item id, ARGV[2] quiet seconds
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
local now = tonumber(redis.call('TIME')[1])
if tonumber(score) > now - tonumber(ARGV[2]) then
  return 0
end
return redis.call('ZREM', KEYS[1], ARGV[1])
