-- Set a shard that Redis lost. A missing shard takes no reserve and no
-- give-back, so nothing can have changed it since the snapshot said missing.
-- KEYS[1] stock shard; ARGV[1] units
-- Returns 1 when set, 0 when another rebuild filled it first.
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 1
end
return 0
