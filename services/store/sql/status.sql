-- name: status_items
-- The items an operator watches: on sale now (inside their window, and stock
-- left or sold in the last $1 seconds), most applied purchases in that time first.
WITH recent AS (
    SELECT item_id, count(*) AS applied
    FROM purchases WHERE applied_at > now() - make_interval(secs => $1)
    GROUP BY item_id
)
SELECT i.item_id, i.stock, i.sold, i.per_user_limit, i.starts_at, i.ends_at, i.hold_s,
       coalesce(r.applied, 0) AS applied
FROM items i LEFT JOIN recent r USING (item_id)
WHERE (i.starts_at IS NULL OR i.starts_at <= now())
  AND (i.ends_at IS NULL OR i.ends_at > now())
  AND (i.sold < i.stock OR r.applied IS NOT NULL)
ORDER BY applied DESC, i.updated_at DESC, i.item_id
LIMIT $2;

-- name: status_item_counts
-- Every item, and those on sale now by the same rule as status_items.
SELECT count(*) AS total,
       count(*) FILTER (
           WHERE (i.starts_at IS NULL OR i.starts_at <= now())
             AND (i.ends_at IS NULL OR i.ends_at > now())
             AND (i.sold < i.stock OR EXISTS (
                 SELECT 1 FROM purchases p
                 WHERE p.item_id = i.item_id
                   AND p.applied_at > now() - make_interval(secs => $1)))
       ) AS on_sale
FROM items i;

-- name: applied_since
-- Purchases applied in the last $1 seconds: the throughput line.
SELECT count(*) FROM purchases WHERE applied_at > now() - make_interval(secs => $1);
