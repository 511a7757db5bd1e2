-- name: ensure_leases
INSERT INTO partition_leases (topic, kafka_partition)
SELECT $1, p FROM generate_series(0, $2 - 1) AS p
ON CONFLICT DO NOTHING;

-- name: acquire_lease
-- Bumping the epoch fences whoever held the partition before.
UPDATE partition_leases
SET epoch = epoch + 1, owner = $3, updated_at = now()
WHERE topic = $1 AND kafka_partition = $2
RETURNING epoch, next_offset, log_generation, last_purchase_id;

-- name: acquire_quiet_lease
-- A retried take: bump only if nobody wrote the row in the last $4 seconds, i.e.
-- nobody took the partition after it was assigned to us (consumers/worker.py).
UPDATE partition_leases
SET epoch = epoch + 1, owner = $3, updated_at = now()
WHERE topic = $1 AND kafka_partition = $2
  AND updated_at <= clock_timestamp() - make_interval(secs => $4)
RETURNING epoch, next_offset, log_generation, last_purchase_id;

-- name: lock_lease
SELECT epoch, next_offset, log_generation, now() AS db_now
FROM partition_leases WHERE topic = $1 AND kafka_partition = $2
FOR UPDATE;

-- name: advance_lease
UPDATE partition_leases
SET next_offset = $3, last_purchase_id = $4, updated_at = now()
WHERE topic = $1 AND kafka_partition = $2;

-- name: start_log_generation
-- The broker lost its log: read the new log from its start under a new generation.
UPDATE partition_leases
SET log_generation = log_generation + 1, next_offset = $4, last_purchase_id = NULL,
    updated_at = now()
WHERE topic = $1 AND kafka_partition = $2 AND epoch = $3
RETURNING epoch, next_offset, log_generation;

-- name: list_leases
-- $2 NULL: every row; else only the partitions below it (the topic's count).
SELECT kafka_partition, epoch, owner, next_offset, log_generation, updated_at
FROM partition_leases
WHERE topic = $1 AND ($2::int IS NULL OR kafka_partition < $2::int)
ORDER BY kafka_partition;

-- name: release_leases_beyond
UPDATE partition_leases SET owner = NULL, updated_at = now()
WHERE topic = $1 AND kafka_partition >= $2 AND owner IS NOT NULL;
