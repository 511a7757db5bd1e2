-- The fault tests' own reads (loadtests/faultcheck.py). Kept beside the checker on
-- purpose, not in services/store: the check must not trust the store it checks.

-- name: applied_at
-- Purchases of $1 that a consumer applied, with when (epoch seconds).
SELECT purchase_id, extract(epoch FROM applied_at) AS at
FROM purchases
WHERE purchase_id = ANY($1::text[]);

-- name: fencing_violations
-- Rows of the items $1 applied at a later offset of the same partition and log
-- under an older lease epoch: a zombie consumer committed after losing its lease.
SELECT count(*)
FROM purchases a
JOIN purchases b
  ON a.kafka_partition = b.kafka_partition AND a.log_generation = b.log_generation
WHERE a.item_id = ANY($1::text[]) AND b.item_id = ANY($1::text[])
  AND b.kafka_offset > a.kafka_offset AND b.lease_epoch < a.lease_epoch;
