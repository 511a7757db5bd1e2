-- A purchase the gateway answered 503 after a produce that may have reached the
-- broker is made final (rejected, reason 'unavailable') by the gateway itself, so
-- a copy that arrives later is a duplicate of a decided purchase (issue 23). Such
-- a row was decided at no offset of the log: kafka_offset is NULL. Its
-- kafka_partition is the one its message went to, whose lease row the gateway
-- locked to write it (the outbox's seq order of that partition holds).
ALTER TABLE purchases ALTER COLUMN kafka_offset DROP NOT NULL;
