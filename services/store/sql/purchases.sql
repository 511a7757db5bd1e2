-- name: get_purchase
SELECT purchase_id, user_id, item_id, quantity, status, reason
FROM purchases WHERE purchase_id = $1;

-- name: known_purchases
SELECT purchase_id, status FROM purchases WHERE purchase_id = ANY($1::text[]);

-- name: confirmed_totals
-- Units each (user, item) pair already holds, for the per-user limit.
SELECT p.user_id, p.item_id, sum(p.quantity)::integer AS units
FROM purchases AS p
JOIN unnest($1::text[], $2::text[]) AS k(user_id, item_id)
  ON p.user_id = k.user_id AND p.item_id = k.item_id
WHERE p.status = 'confirmed'
GROUP BY p.user_id, p.item_id;

-- name: known_requests
-- Final states by (user, idempotency key): the identity the unique constraint enforces.
SELECT p.user_id, p.idempotency_key, p.status
FROM purchases AS p
JOIN unnest($1::text[], $2::text[]) AS k(user_id, idempotency_key)
  ON p.user_id = k.user_id AND p.idempotency_key = k.idempotency_key;

-- name: cancel_purchases
-- Sold shrinks by exactly the rows that were still confirmed, in the same
-- statement: a cancel applied twice changes nothing the second time. Run before
-- insert_purchases, so units freed here can be sold later in the same batch
-- without sold ever passing stock.
WITH cancelled AS (
UPDATE purchases SET status = 'cancelled'
WHERE purchase_id = ANY($1::text[]) AND status = 'confirmed'
RETURNING item_id, quantity
)
UPDATE items SET sold = items.sold - d.units, updated_at = now()
FROM (
    SELECT item_id, sum(quantity)::integer AS units FROM cancelled GROUP BY item_id
) AS d
WHERE items.item_id = d.item_id
RETURNING items.item_id, d.units;

-- name: insert_purchases
-- Sold grows by exactly the confirmed rows that were inserted, in the same
-- statement: a row skipped by a conflict can never count as sold.
WITH inserted AS (
INSERT INTO purchases (
    purchase_id, user_id, idempotency_key, item_id, quantity, status, reason,
    kafka_partition, kafka_offset, log_generation, admitted_at, lease_epoch, applied_by
)
SELECT t.purchase_id, t.user_id, t.idempotency_key, t.item_id, t.quantity, t.status, t.reason,
       $10, t.kafka_offset, $11, to_timestamp(t.admitted_ms / 1000.0), $12, $13
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::text[], $7::text[],
    $8::bigint[], $9::bigint[]
) AS t(purchase_id, user_id, idempotency_key, item_id, quantity, status, reason,
       kafka_offset, admitted_ms)
ON CONFLICT DO NOTHING
RETURNING item_id, quantity, status
)
UPDATE items SET sold = items.sold + d.units, updated_at = now()
FROM (
    SELECT item_id, sum(quantity)::integer AS units
    FROM inserted WHERE status = 'confirmed' GROUP BY item_id
) AS d
WHERE items.item_id = d.item_id
RETURNING items.item_id, d.units;

-- name: count_purchases
SELECT status, count(*)::bigint AS purchases, coalesce(sum(quantity), 0)::bigint AS units
FROM purchases WHERE item_id = $1 GROUP BY status;

-- name: notify_results
SELECT pg_notify($1, $2);

-- name: get_purchases
SELECT purchase_id, user_id, item_id, quantity, status, reason
FROM purchases WHERE purchase_id = ANY($1::text[]);
