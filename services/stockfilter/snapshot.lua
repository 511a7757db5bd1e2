-- One shard as it is at one instant: its units and its reservation records.
-- The rebuild reads Redis first and Postgres second (design.md, "The
-- reconciler"), so every purchase settled after this snapshot is in it.
-- KEYS[1] stock shard, KEYS[2] reservation records of that shard
-- Returns {units or false, {purchase id, record, ...}}.
return {redis.call('GET', KEYS[1]), redis.call('HGETALL', KEYS[2])}
