-- Add (or take) units on a shard that exists. An increment commutes with every
-- concurrent reserve and settle, so a stock change or a drift repair never
-- overwrites what a gateway or a consumer did meanwhile.
-- Taking never goes below zero: a shard below zero would keep a debt that units
-- given back to other shards never pay. What could not be taken (reserves took
-- it since the caller read the level) is in flight; it comes back when those
-- purchases are rejected, and a later repair takes it then.
-- KEYS[1] stock shard; ARGV[1] units to add (negative to take)
-- Returns {1, new level, units added (negative: taken)}, or {-1, 0, 0} when the
-- shard is missing (Redis lost it).
local level = redis.call('GET', KEYS[1])
if not level then
  return {-1, 0, 0}
end
local units = tonumber(ARGV[1])
if units < 0 then
  units = math.max(units, -math.max(tonumber(level), 0))
end
if units == 0 then
  return {1, tonumber(level), 0}
end
return {1, redis.call('INCRBY', KEYS[1], units), units}
