-- name: unpublished_events
-- The oldest events not yet acknowledged by the broker, of the partitions whose
-- lease ($2 partitions, $3 epochs) the caller still holds.
SELECT e.seq, e.event_id, e.purchase_id, e.user_id, e.item_id, e.quantity, e.status,
       e.reason, e.at
FROM purchase_events AS e
JOIN partition_leases AS l ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition
JOIN unnest($2::integer[], $3::bigint[]) AS o(kafka_partition, epoch)
  ON o.kafka_partition = l.kafka_partition AND o.epoch = l.epoch
WHERE e.topic = $1 AND e.published_at IS NULL
ORDER BY e.seq
LIMIT $4;

-- name: mark_published
UPDATE purchase_events SET published_at = now()
WHERE seq = ANY($1::bigint[]) AND published_at IS NULL;
