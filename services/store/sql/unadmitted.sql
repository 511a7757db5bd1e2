-- name: lock_lease_row
-- The lease row of the partition a purchase's message went to, locked as a batch
-- locks it: a batch applying that message runs wholly before or wholly after us,
-- and events of the partition keep their seq in commit order. No epoch check:
-- the gateway owns no partition and writes no offset.
SELECT log_generation, epoch FROM partition_leases
WHERE topic = $1 AND kafka_partition = $2
FOR UPDATE;

-- name: reject_unadmitted
-- The purchase's final row, rejected with $9 as reason, unless it has one (its
-- message was applied first): ON CONFLICT DO NOTHING on the purchase id and on
-- (user, idempotency key). Nothing was sold, so items is not touched. The row's
-- event goes to the outbox in the same statement.
WITH inserted AS (
INSERT INTO purchases (
    purchase_id, user_id, idempotency_key, item_id, quantity, status, reason,
    kafka_partition, kafka_offset, log_generation, admitted_at, lease_epoch, applied_by, topic
)
VALUES ($1, $2, $3, $4, $5, 'rejected', $9::text, $7::integer, NULL, $8::integer,
        to_timestamp($6::bigint / 1000.0), $10::bigint, $11::text, $12::text)
ON CONFLICT DO NOTHING
RETURNING purchase_id, user_id, item_id, quantity, status, reason
), events AS (
INSERT INTO purchase_events (
    event_id, purchase_id, user_id, item_id, quantity, status, reason, topic, kafka_partition
)
SELECT purchase_id || ':' || status, purchase_id, user_id, item_id, quantity, status, reason,
       $12, $7
FROM inserted
)
SELECT purchase_id FROM inserted;
