-- The common admission in one call: claim.lua, then, when the claim is new,
-- reserve.lua on the shard the claim names. One Redis node only: the record
-- and the shard are in different hash slots (admit.py calls the two scripts
-- one after the other on a cluster).
-- KEYS[1] idempotency record, KEYS[2] stock shard, KEYS[3] its reservation records
-- ARGV[1] claim record, ARGV[2] ttl in seconds, ARGV[3] purchase id,
-- ARGV[4] quantity, ARGV[5] reservation record
-- Returns {0, existing record} when the key was claimed before (nothing is
-- reserved then), else {1, code, units left} with reserve.lua's codes.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return {0, current}
end
-- Our own claim already there: this call is a resend after its reply was lost
-- (each claim carries a nonce of its own). The reserve below then finds its
-- reservation record and answers "already reserved": safe to run twice.
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
end
local left = redis.call('GET', KEYS[2])
if not left then
  return {1, -2, 0}
end
left = tonumber(left)
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then
  return {1, -1, left}
end
local quantity = tonumber(ARGV[4])
if left < quantity then
  return {1, 0, left}
end
redis.call('DECRBY', KEYS[2], quantity)
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
return {1, 1, left - quantity}
