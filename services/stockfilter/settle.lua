-- Drop reservation records of purchases that reached a final state, giving
-- the units of rejected ones back. A record that is already gone gives
-- nothing back, so settling twice is harmless.
-- KEYS[1] stock shard, KEYS[2] reservation records of that shard
-- ARGV: triples of purchase id, quantity, 1 to give the units back or 0
-- Returns the units given back.
local returned = 0
for i = 1, #ARGV, 3 do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 and ARGV[i + 2] == '1' then
    returned = returned + tonumber(ARGV[i + 1])
  end
end
if returned > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], returned)
end
return returned
