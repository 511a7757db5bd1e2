-- name: pass_fences
-- In the batch transaction, under the lease lock: the partition passed these fences.
INSERT INTO redis_fences (token, topic, kafka_partition)
SELECT unnest($1::text[]), $2, $3
ON CONFLICT DO NOTHING;

-- name: fence_verdict
-- One statement, one snapshot: the partitions that passed fence $1 and whether
-- purchase $3 is known. A purchase before the fence commits with or before the
-- fence's row, so "passed everywhere and unknown" is never a purchase applied
-- between two questions.
SELECT
    coalesce(
        (SELECT array_agg(kafka_partition) FROM redis_fences WHERE token = $1 AND topic = $2),
        '{}'::integer[]
    ) AS passed,
    EXISTS (SELECT 1 FROM purchases WHERE purchase_id = $3) AS known;
