-- Items: the correctness layer for stock. sold <= stock can never be false.
CREATE TABLE items (
    item_id        text PRIMARY KEY,
    stock          integer NOT NULL CHECK (stock >= 0),
    sold           integer NOT NULL DEFAULT 0 CHECK (sold >= 0),
    per_user_limit integer NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT no_oversell CHECK (sold <= stock)
);

-- One row per purchase that reached a final state. The primary key is a keyed
-- hash of (user, idempotency key), so a redelivered or republished copy is a no-op.
CREATE TABLE purchases (
    purchase_id     text PRIMARY KEY,
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    item_id         text NOT NULL,
    quantity        integer NOT NULL CHECK (quantity >= 1),
    status          text NOT NULL CHECK (status IN ('confirmed', 'rejected')),
    reason          text,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    log_generation  integer NOT NULL,
    admitted_at     timestamptz NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT one_purchase_per_key UNIQUE (user_id, idempotency_key)
);
CREATE INDEX purchases_item_status ON purchases (item_id, status);
CREATE INDEX purchases_user_item ON purchases (user_id, item_id) WHERE status = 'confirmed';

-- A partition's lease: the epoch fences zombies, next_offset commits with the orders.
CREATE TABLE partition_leases (
    topic          text NOT NULL,
    kafka_partition integer NOT NULL,
    epoch          bigint NOT NULL DEFAULT 0,
    owner          text,
    next_offset    bigint NOT NULL DEFAULT 0,
    log_generation integer NOT NULL DEFAULT 0,
    last_purchase_id text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition)
);
