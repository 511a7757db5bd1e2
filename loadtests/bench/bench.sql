-- Every query of the benchmark. The baselines' tables live beside flashsale's in
-- the same database. Deliberately no CHECK (sold <= stock): the lock design must
-- stand on its lock.

-- name: create_tables
CREATE TABLE IF NOT EXISTS bench_items (
    item_id      text PRIMARY KEY,
    stock        integer NOT NULL,
    sold         integer NOT NULL DEFAULT 0,
    last_sale_at timestamptz
);
CREATE TABLE IF NOT EXISTS bench_orders (
    order_id        bigserial PRIMARY KEY,
    item_id         text NOT NULL,
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS bench_orders_item ON bench_orders (item_id);

-- name: create_item
INSERT INTO bench_items (item_id, stock) VALUES ($1, $2);

-- name: row_buy
-- postgres_row: the whole purchase is this statement; the WHERE re-checks the row
-- after waiting for its lock, so it cannot oversell.
UPDATE bench_items SET sold = sold + 1, last_sale_at = clock_timestamp()
WHERE item_id = $1 AND sold < stock
RETURNING sold;

-- name: lock_read
SELECT stock, sold FROM bench_items WHERE item_id = $1;

-- name: lock_insert_order
INSERT INTO bench_orders (item_id, user_id, idempotency_key) VALUES ($1, $2, $3);

-- name: lock_add_sold
UPDATE bench_items SET sold = sold + 1, last_sale_at = clock_timestamp() WHERE item_id = $1;

-- name: tally
SELECT i.stock, i.sold, i.last_sale_at,
       (SELECT count(*) FROM bench_orders AS o WHERE o.item_id = i.item_id)::integer AS orders
FROM bench_items AS i WHERE i.item_id = $1;

-- name: flashsale_last_confirmation
-- When flashsale's last unit was confirmed (the consumer's commit time).
SELECT max(applied_at) FROM purchases WHERE item_id = $1 AND status = 'confirmed';
