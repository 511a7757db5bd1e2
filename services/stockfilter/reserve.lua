-- Take `quantity` units from one stock shard and leave the reservation record
-- (the message to publish again) in the same call: a unit is never taken
-- without a record that can bring it back.
-- KEYS[1] stock shard, KEYS[2] reservation records of that shard
-- ARGV[1] purchase id, ARGV[2] quantity, ARGV[3] record
-- Returns {code, units left}: 1 reserved, 0 not enough here, -1 already
-- reserved here (a retry), -2 shard missing (Redis lost it: rebuild).
local left = redis.call('GET', KEYS[1])
if not left then
  return {-2, 0}
end
left = tonumber(left)
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {-1, left}
end
local quantity = tonumber(ARGV[2])
if left < quantity then
  return {0, left}
end
redis.call('DECRBY', KEYS[1], quantity)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return {1, left - quantity}
