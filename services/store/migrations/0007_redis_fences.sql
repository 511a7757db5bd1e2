-- Fences through the purchases log (docs/faults.md, "Redis lost data"): when a
-- gateway finds that Redis lost data, it produces a fence named after Redis'
-- new incarnation to every partition. The partition's owner inserts a row here
-- in the batch transaction that passes the fence, so once every partition has
-- its row, every purchase acknowledged before the loss was noticed is applied:
-- a purchase id Postgres does not know and Redis does not hold was never
-- accepted. One row per partition per Redis loss.
CREATE TABLE redis_fences (
    token           text NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    passed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token, topic, kafka_partition)
);
