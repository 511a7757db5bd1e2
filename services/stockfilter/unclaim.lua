-- Drop or replace the idempotency record only if it is still the one we wrote.
-- KEYS[1] idempotency record; ARGV[1] the record we wrote, ARGV[2] new record
-- or '' to delete, ARGV[3] ttl in seconds, ARGV[4] '1' to write the new record
-- also when the record is gone (Redis lost it: marking a produced purchase
-- published must leave a record a later GET finds)
-- Returns 1 when done, 2 when written again over a missing record, else 0.
local current = redis.call('GET', KEYS[1])
if ARGV[2] ~= '' and current == ARGV[2] then
  -- Replaced already: this is a resend after its reply was lost (a new record
  -- carries its writer's nonce, so no one else wrote this value).
  return 1
end
if not current and ARGV[4] == '1' and ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 2
end
if current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
