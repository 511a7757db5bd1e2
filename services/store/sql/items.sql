-- name: get_item
SELECT item_id, stock, sold, per_user_limit, starts_at, ends_at, hold_s FROM items WHERE item_id = $1;

-- name: list_items
SELECT item_id, stock, sold, per_user_limit, starts_at, ends_at, hold_s FROM items ORDER BY item_id LIMIT $1;

-- name: lock_items
-- Sorted so two transactions locking the same items never deadlock.
SELECT item_id, stock, sold, per_user_limit, hold_s
FROM items WHERE item_id = ANY($1::text[])
ORDER BY item_id
FOR UPDATE;

-- name: get_items
SELECT item_id, stock, sold, per_user_limit, starts_at, ends_at, hold_s FROM items WHERE item_id = ANY($1::text[]);

-- name: lock_item
-- The stock before an admin write, read under the row lock the write takes:
-- the filter then changes by exactly new - old, whatever runs concurrently.
SELECT stock FROM items WHERE item_id = $1 FOR UPDATE;

-- name: insert_item
INSERT INTO items (item_id, stock, per_user_limit, starts_at, ends_at, hold_s)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (item_id) DO NOTHING
RETURNING item_id, stock, sold, per_user_limit, starts_at, ends_at, hold_s;

-- name: update_item
-- Lowering stock below what is sold updates nothing (the caller answers 409).
UPDATE items
SET stock = $2, per_user_limit = $3, starts_at = $4, ends_at = $5, hold_s = $6, updated_at = now()
WHERE item_id = $1 AND sold <= $2
RETURNING item_id, stock, sold, per_user_limit, starts_at, ends_at, hold_s;

-- name: item_ids_after
-- One page of a walk over every item (the reconciler's sweep after Redis lost its data).
SELECT item_id FROM items WHERE item_id > $1 ORDER BY item_id LIMIT $2;

-- name: recent_items
-- The items a live dashboard shows: those whose stock or sales changed last.
SELECT item_id, stock, sold, per_user_limit, starts_at, ends_at, hold_s
FROM items ORDER BY updated_at DESC, item_id LIMIT $1;
