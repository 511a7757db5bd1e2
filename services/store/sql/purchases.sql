-- name: get_purchase
SELECT purchase_id, user_id, item_id, quantity, status, reason, pay_by
FROM purchases WHERE purchase_id = $1;

-- name: known_purchases
SELECT purchase_id, item_id, status, reason FROM purchases WHERE purchase_id = ANY($1::text[]);

-- name: confirmed_totals
-- Units each (user, item) pair already holds, for the per-user limit: a paid
-- purchase is held as much as a confirmed one.
-- LATERAL: one index probe per pair. A plain join let the planner hash the
-- whole table's held rows on every batch, a cost that grew with every sale.
SELECT k.user_id, k.item_id, h.units
FROM unnest($1::text[], $2::text[]) AS k(user_id, item_id)
CROSS JOIN LATERAL (
    SELECT sum(p.quantity)::integer AS units
    FROM purchases AS p
    WHERE p.user_id = k.user_id AND p.item_id = k.item_id
      AND p.status IN ('confirmed', 'paid')
) AS h
WHERE h.units IS NOT NULL;

-- name: known_requests
-- Final states by (user, idempotency key): the identity the unique constraint enforces.
-- LATERAL for the same reason as confirmed_totals: one probe of the key's unique
-- index each (LIMIT 1, true of a unique key, keeps the planner from turning it
-- back into a join).
SELECT k.user_id, k.idempotency_key, p.status
FROM unnest($1::text[], $2::text[]) AS k(user_id, idempotency_key)
CROSS JOIN LATERAL (
    SELECT status FROM purchases
    WHERE user_id = k.user_id AND idempotency_key = k.idempotency_key
    LIMIT 1
) AS p;

-- name: release_purchases
-- Cancel ($4 = 'cancelled') or expire ($4 = 'expired') confirmed purchases.
-- Sold shrinks by exactly the rows that were still confirmed, in the same
-- statement: a cancel applied twice changes nothing the second time. Run before
-- insert_purchases, so units freed here can be sold later in the same batch
-- without sold ever passing stock. Each change is an event in the outbox.
WITH released AS (
UPDATE purchases SET status = $4::text
WHERE purchase_id = ANY($1::text[]) AND status = 'confirmed'
RETURNING purchase_id, user_id, item_id, quantity, status, reason
), events AS (
INSERT INTO purchase_events (
    event_id, purchase_id, user_id, item_id, quantity, status, reason, topic, kafka_partition
)
SELECT purchase_id || ':' || status, purchase_id, user_id, item_id, quantity, status, reason,
       $2, $3
FROM released ORDER BY array_position($1::text[], purchase_id)
)
UPDATE items SET sold = items.sold - d.units, updated_at = now()
FROM (
    SELECT item_id, sum(quantity)::integer AS units FROM released GROUP BY item_id
) AS d
WHERE items.item_id = d.item_id
RETURNING items.item_id, d.units;

-- name: pay_purchases
-- Paid keeps its units sold: only the status changes (and an event is written).
WITH paid AS (
UPDATE purchases SET status = 'paid'
WHERE purchase_id = ANY($1::text[]) AND status = 'confirmed' AND pay_by IS NOT NULL
RETURNING purchase_id, user_id, item_id, quantity, status, reason
)
INSERT INTO purchase_events (
    event_id, purchase_id, user_id, item_id, quantity, status, reason, topic, kafka_partition
)
SELECT purchase_id || ':' || status, purchase_id, user_id, item_id, quantity, status, reason,
       $2, $3
FROM paid ORDER BY array_position($1::text[], purchase_id)

-- name: insert_purchases
-- Sold grows by exactly the held (confirmed or paid) rows that were inserted, in
-- the same statement: a row skipped by a conflict can never count as sold. Every
-- inserted row is an event; a row inserted already cancelled or paid (both in
-- one batch) is two: confirmed, then its status. Answers the rows inserted: a
-- conflict means another transaction wrote the purchase meanwhile (batch.py).
WITH inserted AS (
INSERT INTO purchases (
    purchase_id, user_id, idempotency_key, item_id, quantity, status, reason,
    kafka_partition, kafka_offset, log_generation, admitted_at, lease_epoch, applied_by,
    pay_by, topic
)
SELECT t.purchase_id, t.user_id, t.idempotency_key, t.item_id, t.quantity, t.status, t.reason,
       $10, t.kafka_offset, $11, to_timestamp(t.admitted_ms / 1000.0), $12, $13,
       t.pay_by, $15
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::text[], $7::text[],
    $8::bigint[], $9::bigint[], $14::timestamptz[]
) AS t(purchase_id, user_id, idempotency_key, item_id, quantity, status, reason,
       kafka_offset, admitted_ms, pay_by)
ON CONFLICT DO NOTHING
RETURNING purchase_id, user_id, item_id, quantity, status, reason, kafka_offset
), events AS (
INSERT INTO purchase_events (
    event_id, purchase_id, user_id, item_id, quantity, status, reason, topic, kafka_partition
)
SELECT i.purchase_id || ':' || s.status, i.purchase_id, i.user_id, i.item_id, i.quantity,
       s.status, CASE WHEN s.step = 2 THEN i.reason END, $15, $10
FROM inserted AS i
CROSS JOIN LATERAL (
    SELECT 'confirmed'::text AS status, 1 AS step
    WHERE i.status NOT IN ('confirmed', 'rejected')
    UNION ALL
    SELECT i.status, 2
) AS s
ORDER BY i.kafka_offset, s.step
), sold AS (
UPDATE items SET sold = items.sold + d.units, updated_at = now()
FROM (
    SELECT item_id, sum(quantity)::integer AS units
    FROM inserted WHERE status IN ('confirmed', 'paid') GROUP BY item_id
) AS d
WHERE items.item_id = d.item_id
)
SELECT count(*)::integer FROM inserted;

-- name: count_purchases
SELECT status, count(*)::bigint AS purchases, coalesce(sum(quantity), 0)::bigint AS units
FROM purchases WHERE item_id = $1 GROUP BY status;

-- name: notify_results
SELECT pg_notify($1, $2);

-- name: get_purchases
SELECT purchase_id, user_id, item_id, quantity, status, reason, pay_by
FROM purchases WHERE purchase_id = ANY($1::text[]);
