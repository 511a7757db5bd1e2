-- One shard's units and how many reservation records it holds, at one instant:
-- the reconciler's cheap drift check (services/filterrepair.py), which reads no
-- record itself.
-- KEYS[1] stock shard, KEYS[2] reservation records of that shard
-- Returns {units or false, records}.
return {redis.call('GET', KEYS[1]), redis.call('HLEN', KEYS[2])}
