-- name: expire_due
-- The partition owner's sweep: confirmed holds past pay_by (by the database's
-- clock) become expired, their units leave sold, and each is an event; all in
-- the caller's transaction, after it locked the lease and checked its epoch.
WITH due AS (
SELECT purchase_id FROM purchases
WHERE topic = $1 AND kafka_partition = $2
  AND status = 'confirmed' AND pay_by IS NOT NULL AND pay_by < now()
ORDER BY pay_by, purchase_id
LIMIT $3
FOR UPDATE
), expired AS (
UPDATE purchases AS p SET status = 'expired'
FROM due WHERE p.purchase_id = due.purchase_id AND p.status = 'confirmed'
RETURNING p.purchase_id, p.user_id, p.item_id, p.quantity, p.status, p.reason, p.pay_by
), events AS (
INSERT INTO purchase_events (
    event_id, purchase_id, user_id, item_id, quantity, status, reason, topic, kafka_partition
)
SELECT purchase_id || ':' || status, purchase_id, user_id, item_id, quantity, status, reason,
       $1, $2
FROM expired ORDER BY pay_by, purchase_id
), returned AS (
UPDATE items SET sold = items.sold - d.units, updated_at = now()
FROM (
    SELECT item_id, sum(quantity)::integer AS units FROM expired GROUP BY item_id
) AS d
WHERE items.item_id = d.item_id
)
SELECT purchase_id, user_id, item_id, quantity, status, pay_by FROM expired
ORDER BY pay_by, purchase_id;

-- name: due_partitions
-- Which of the caller's partitions have holds past pay_by: the sweep then locks
-- only those leases (one cheap read a second instead of a transaction each).
SELECT DISTINCT kafka_partition FROM purchases
WHERE topic = $1 AND kafka_partition = ANY($2::integer[])
  AND status = 'confirmed' AND pay_by IS NOT NULL AND pay_by < now();
