-- Holds (api.md): a confirmed purchase of an item with hold_s must be paid by
-- pay_by, or its partition's owner expires it. The purchase remembers the topic
-- it was applied from, so the owner of (topic, partition) finds its own holds.
ALTER TABLE purchases ADD COLUMN pay_by timestamptz;
ALTER TABLE purchases ADD COLUMN topic text;
CREATE INDEX purchases_due ON purchases (topic, kafka_partition, pay_by)
    WHERE status = 'confirmed' AND pay_by IS NOT NULL;
-- The per-user limit counts what a user holds: confirmed and paid units.
CREATE INDEX purchases_user_item_held ON purchases (user_id, item_id)
    WHERE status IN ('confirmed', 'paid');

-- The outbox (design.md, "Events downstream"): one row per status change,
-- written in the transaction of the change. `seq` orders the events of a
-- partition (its writers take the lease row lock first, so seq grows in commit
-- order there); `event_id` (purchase id and status: each status is reached once)
-- lets readers deduplicate a relay's resend.
CREATE TABLE purchase_events (
    seq             bigserial PRIMARY KEY,
    event_id        text NOT NULL UNIQUE,
    purchase_id     text NOT NULL,
    user_id         text NOT NULL,
    item_id         text NOT NULL,
    quantity        integer NOT NULL,
    status          text NOT NULL,
    reason          text,
    at              timestamptz NOT NULL DEFAULT now(),
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    published_at    timestamptz
);
CREATE INDEX purchase_events_unpublished ON purchase_events (topic, kafka_partition, seq)
    WHERE published_at IS NULL;
