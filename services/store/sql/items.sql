-- name: upsert_item
-- Lowering stock below what is sold updates nothing (the caller answers 409).
INSERT INTO items AS i (item_id, stock, per_user_limit)
VALUES ($1, $2, $3)
ON CONFLICT (item_id) DO UPDATE
    SET stock = EXCLUDED.stock, per_user_limit = EXCLUDED.per_user_limit, updated_at = now()
    WHERE i.sold <= EXCLUDED.stock
RETURNING item_id, stock, sold, per_user_limit, (xmax = 0) AS created;

-- name: get_item
SELECT item_id, stock, sold, per_user_limit FROM items WHERE item_id = $1;

-- name: list_items
SELECT item_id, stock, sold, per_user_limit FROM items ORDER BY item_id LIMIT $1;

-- name: lock_items
-- Sorted so two transactions locking the same items never deadlock.
SELECT item_id, stock, sold, per_user_limit
FROM items WHERE item_id = ANY($1::text[])
ORDER BY item_id
FOR UPDATE;
