-- Remember that an item has admissions, stamped with Redis' own clock so that
-- gateways on machines with skewed clocks agree.
-- KEYS[1] active items; ARGV[1] item id
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(now[1]), ARGV[1])
return tonumber(now[1])
