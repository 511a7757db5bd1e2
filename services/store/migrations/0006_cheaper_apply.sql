-- Cheaper batches (issue 10): every index a purchase or an event is written
-- into costs each batch, and these pay for nothing.
-- purchases_user_item_held (confirmed and paid) answers every query this one did.
DROP INDEX purchases_user_item;

-- Each status change writes its event once by construction: a purchase row is
-- inserted once (ON CONFLICT DO NOTHING returns only new rows) and a status
-- changes only from 'confirmed', under the partition's lease lock. Readers
-- deduplicate the relay's resends by event_id; the table need not, and the
-- lifecycle check counts duplicates.
ALTER TABLE purchase_events DROP CONSTRAINT purchase_events_event_id_key;

-- "Published" becomes one number per partition instead of a mark on every row
-- (each mark rewrote the row and its index entries). A partition's events are
-- written under its lease lock, so their seq grows in commit order there: the
-- committed events of a partition are always a prefix of its seq order, and
-- "every event up to seq N was acknowledged" says it all. The outbox becomes
-- append-only, with one index.
ALTER TABLE partition_leases ADD COLUMN events_published_seq bigint NOT NULL DEFAULT 0;
UPDATE partition_leases AS l SET events_published_seq = coalesce(
    (SELECT min(e.seq) - 1 FROM purchase_events AS e
     WHERE e.topic = l.topic AND e.kafka_partition = l.kafka_partition
       AND e.published_at IS NULL),
    (SELECT max(e.seq) FROM purchase_events AS e
     WHERE e.topic = l.topic AND e.kafka_partition = l.kafka_partition),
    0
);
DROP INDEX purchase_events_unpublished;
ALTER TABLE purchase_events DROP COLUMN published_at;
ALTER TABLE purchase_events DROP CONSTRAINT purchase_events_pkey;
ALTER TABLE purchase_events ADD PRIMARY KEY (topic, kafka_partition, seq);
