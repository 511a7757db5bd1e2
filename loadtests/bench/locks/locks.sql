-- The critical section every lock design runs (bench_items / bench_orders of
-- bench.sql, deliberately without a CHECK: only the lock protects the stock).

-- name: add_fence
-- etcd_lease_fenced: the highest fencing token that claimed the item.
ALTER TABLE bench_items ADD COLUMN IF NOT EXISTS fence bigint NOT NULL DEFAULT 0;

-- name: read
SELECT stock, sold FROM bench_items WHERE item_id = $1;

-- name: fenced_read
-- The read claims the item with the lock's token: only a newer token may claim it
-- after this. A token checked at the write alone would not protect a
-- read-then-write (two holders both read before either writes).
UPDATE bench_items SET fence = $2 WHERE item_id = $1 AND fence < $2 RETURNING stock, sold;

-- name: insert_order
INSERT INTO bench_orders (item_id, user_id, idempotency_key) VALUES ($1, $2, $3);

-- name: add_sold
UPDATE bench_items SET sold = sold + 1, last_sale_at = clock_timestamp() WHERE item_id = $1;

-- name: fenced_add_sold
-- Rejected (no row) once a newer token claimed the item.
UPDATE bench_items SET sold = sold + 1, last_sale_at = clock_timestamp()
WHERE item_id = $1 AND fence = $2 RETURNING sold;

-- name: advisory_lock
SELECT pg_advisory_xact_lock(hashtext($1));
