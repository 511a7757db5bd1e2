-- The invariant checker's own reads (loadtests/invariants.py, holds.py,
-- filtercheck.py, eventcheck.py). Kept beside the checker on purpose, not in
-- services/store: the check must not share a bug with the store it checks.

-- name: item_row
SELECT stock, sold FROM items WHERE item_id = $1;

-- name: status_counts
-- Purchases of item $1 per status, with their units.
SELECT status, count(*) AS n, coalesce(sum(quantity), 0) AS units
FROM purchases
WHERE item_id = $1
GROUP BY status;

-- name: sold_out_count
SELECT count(*) FROM purchases WHERE item_id = $1 AND reason = 'sold_out';

-- name: unfair_confirmations
-- Confirmations of item $1 later in its partition's log than a sold_out of no
-- more units, counted only when the confirmation's event precedes every return
-- (cancel or expiry) of the item: after a return, a later sale is fair.
SELECT count(*)
FROM purchases r
JOIN purchases c
  ON c.item_id = r.item_id AND c.log_generation = r.log_generation
  AND c.kafka_partition = r.kafka_partition
WHERE r.item_id = $1 AND r.reason = 'sold_out' AND c.status IN ('confirmed', 'paid')
  AND c.kafka_offset > r.kafka_offset AND c.quantity >= r.quantity
  AND NOT EXISTS (
    SELECT 1 FROM purchase_events ce
    JOIN purchase_events back
      ON back.item_id = ce.item_id AND back.status IN ('cancelled', 'expired')
      AND back.seq <= ce.seq
    WHERE ce.event_id = c.purchase_id || ':confirmed'
  );

-- name: purchase_statuses
SELECT purchase_id, status FROM purchases WHERE purchase_id = ANY($1::text[]);

-- name: final_among
-- Which of the purchases $1 have reached one of the statuses $2.
SELECT purchase_id
FROM purchases
WHERE purchase_id = ANY($1::text[]) AND status = ANY($2::text[]);

-- name: over_user_limit
-- (item, user) pairs of the items $1 holding more units than the per-user limit.
SELECT p.item_id, p.user_id, sum(p.quantity) AS units, i.per_user_limit
FROM purchases p
JOIN items i ON i.item_id = p.item_id
WHERE p.item_id = ANY($1::text[]) AND p.status IN ('confirmed', 'paid')
GROUP BY p.item_id, p.user_id, i.per_user_limit
HAVING sum(p.quantity) > i.per_user_limit;

-- name: key_purchases
-- Every purchase stored under the (user, idempotency key) pairs $1[i], $2[i].
SELECT p.user_id, p.idempotency_key, p.purchase_id
FROM purchases p
JOIN unnest($1::text[], $2::text[]) AS k(user_id, idempotency_key)
  ON p.user_id = k.user_id AND p.idempotency_key = k.idempotency_key;

-- name: user_prefix_purchases
SELECT count(*) FROM purchases WHERE starts_with(user_id, $1);

-- name: item_purchases
SELECT count(*) FROM purchases WHERE item_id = $1;

-- name: unsettled_holds
-- Holds of the items $1 still confirmed: neither paid nor expired yet.
SELECT count(*)
FROM purchases
WHERE item_id = ANY($1::text[]) AND status = 'confirmed' AND pay_by IS NOT NULL;

-- name: missing_events
-- Status changes of the items $1 with no event in the outbox: every status a
-- purchase has, and confirmed for those that moved on ($2) from it.
WITH expected AS (
  SELECT purchase_id || ':' || status AS event_id FROM purchases
  WHERE item_id = ANY($1::text[])
  UNION ALL
  SELECT purchase_id || ':confirmed' FROM purchases
  WHERE item_id = ANY($1::text[]) AND status = ANY($2::text[])
)
SELECT x.event_id
FROM expected x
LEFT JOIN purchase_events e ON e.event_id = x.event_id
WHERE e.seq IS NULL;

-- name: stray_events
-- Events of the items $1 naming a status their purchase does not have (confirmed
-- is right for a purchase that moved on, $2).
SELECT e.event_id, p.status
FROM purchase_events e
LEFT JOIN purchases p ON p.purchase_id = e.purchase_id
WHERE e.item_id = ANY($1::text[]) AND (p.purchase_id IS NULL OR NOT (
  e.status = p.status OR (e.status = 'confirmed' AND p.status = ANY($2::text[]))
));

-- name: events_before_confirmed
SELECT count(*)
FROM purchase_events c
JOIN purchase_events m ON m.purchase_id = c.purchase_id AND m.status <> 'confirmed'
WHERE c.item_id = ANY($1::text[]) AND c.status = 'confirmed' AND m.seq < c.seq;

-- name: events_written_twice
-- Status changes of the items $1 with more than one outbox row.
SELECT count(*)
FROM (
  SELECT event_id FROM purchase_events
  WHERE item_id = ANY($1::text[])
  GROUP BY event_id HAVING count(*) > 1
) AS d;

-- name: unpublished_events
-- Events of the items $1 above their partition's published mark.
SELECT count(*)
FROM purchase_events e
JOIN partition_leases l ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition
WHERE e.item_id = ANY($1::text[]) AND e.seq > l.events_published_seq;

-- name: published_events
-- The events of the items $1 at or below their partition's published mark, in
-- outbox order.
SELECT e.item_id, e.event_id
FROM purchase_events e
JOIN partition_leases l ON l.topic = e.topic AND l.kafka_partition = e.kafka_partition
WHERE e.item_id = ANY($1::text[]) AND e.seq <= l.events_published_seq
ORDER BY e.seq;
