-- name: unpublished_events
-- The oldest events past their partition's published mark, of the partitions
-- whose lease ($2 partitions, $3 epochs) the caller still holds: one range of
-- the primary key per partition.
SELECT e.seq, e.event_id, e.purchase_id, e.user_id, e.item_id, e.quantity, e.status,
       e.reason, e.at, e.kafka_partition
FROM unnest($2::integer[], $3::bigint[]) AS o(kafka_partition, epoch)
JOIN partition_leases AS l
  ON l.topic = $1 AND l.kafka_partition = o.kafka_partition AND l.epoch = o.epoch
CROSS JOIN LATERAL (
    SELECT * FROM purchase_events AS p
    WHERE p.topic = $1 AND p.kafka_partition = o.kafka_partition
      AND p.seq > l.events_published_seq
    ORDER BY p.seq
    LIMIT $4
) AS e
ORDER BY e.seq
LIMIT $4;

-- name: mark_published
-- Every event of the partition up to $3 was acknowledged by the broker. Whoever
-- published them may say so, the lease's owner or one that just lost it: the
-- mark only moves forward.
UPDATE partition_leases SET events_published_seq = greatest(events_published_seq, $3)
WHERE topic = $1 AND kafka_partition = $2;

-- name: prune_published
-- The outbox keeps what readers may need replayed for a while, not forever:
-- delete, from the partition's oldest, up to $4 published events written more
-- than $3 seconds ago. It stops at the first younger one (seq follows the
-- write order of the partition), so it reads at most $4 rows of the primary key.
WITH oldest AS (
    SELECT e.seq, e.at
    FROM purchase_events AS e
    JOIN partition_leases AS l ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition
    WHERE e.topic = $1 AND e.kafka_partition = $2 AND e.seq <= l.events_published_seq
    ORDER BY e.seq
    LIMIT $4
), first_kept AS (
    SELECT coalesce(min(seq), 9223372036854775807) AS seq
    FROM oldest WHERE at >= now() - make_interval(secs => $3)
)
DELETE FROM purchase_events AS e
USING oldest AS o, first_kept AS k
WHERE e.topic = $1 AND e.kafka_partition = $2 AND e.seq = o.seq AND o.seq < k.seq;
