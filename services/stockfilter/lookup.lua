-- An idempotency record, read with the incarnation marker of the node that
-- holds it (same node; on a cluster the same hash slot), in one atomic call.
-- The marker is "<token> <master_replid> <run_id> <evicted_keys>". It is written anew when it
-- is missing (a restart without persistence, FLUSHALL), when the node's
-- replication id changed (a replica was promoted: its history may lack the
-- last writes of the old master, whose marker it still holds), or when the
-- process is another one (a restart from a snapshot that lacks the last writes
-- keeps the marker, and may keep the replication id), or when Redis evicted
-- keys since (maxmemory with an eviction policy: a record may be among them;
-- the project runs noeviction). While the marker reads the same, nothing
-- written since it was set has been lost.
-- KEYS[1] idempotency record, KEYS[2] marker; ARGV[1] a fresh random token
-- Returns {record, false, 0} when the record is there, else {false, current
-- token, 1 when this call wrote the marker}.
local record = redis.call('GET', KEYS[1])
if record then
  -- Found: nothing to vouch for, and INFO costs some 30 us of Redis' time.
  return {record, false, 0}
end
local info = redis.call('INFO', 'server', 'replication', 'stats')
local replid = string.match(info, 'master_replid:(%w+)') or '?'
local run_id = string.match(info, 'run_id:(%w+)') or '?'
local evicted = string.match(info, 'evicted_keys:(%d+)') or '?'
local node = replid .. ' ' .. run_id .. ' ' .. evicted
local marker = redis.call('GET', KEYS[2])
if marker then
  local token, seen = string.match(marker, '^(%S+) (.+)$')
  if token and seen == node then
    return {record, token, 0}
  end
end
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. node)
return {record, ARGV[1], 1}
