-- Add (or take) units on a shard that exists. An increment commutes with every
-- concurrent reserve and settle, so a stock change never overwrites what a
-- gateway or a consumer did meanwhile. Callers never take more than a shard
-- holds: a shard below zero would keep a debt that units given back to other
-- shards never pay.
-- With ARGV[2], only when the shard still holds exactly that many units: a
-- drift repair computed from a snapshot is applied once, however many
-- reconcilers computed it, and never over a change it did not see.
-- KEYS[1] stock shard; ARGV[1] units to add (negative to take), ARGV[2] expected level
-- Returns {1, new level}, {0, level} when the level was not the expected one,
-- or {-1, 0} when the shard is missing (Redis lost it).
local level = redis.call('GET', KEYS[1])
if not level then
  return {-1, 0}
end
if ARGV[2] and tonumber(level) ~= tonumber(ARGV[2]) then
  return {0, tonumber(level)}
end
return {1, redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))}
