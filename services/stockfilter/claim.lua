-- The idempotency record: the first copy of (user, key) claims it; any later
-- copy reads what the first one wrote.
-- KEYS[1] idempotency record; ARGV[1] record, ARGV[2] ttl in seconds
-- Returns {1, ''} when claimed now, {0, existing record} otherwise.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  -- Our own claim, run again (a resend after its reply was lost): each claim
  -- carries a nonce of its own, so no other request wrote this value.
  return {1, ''}
end
if current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return {1, ''}
