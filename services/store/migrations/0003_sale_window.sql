-- The sale's window and holds (design.md, "The sale's lifecycle"): null where unset.
ALTER TABLE items ADD COLUMN starts_at timestamptz;
ALTER TABLE items ADD COLUMN ends_at timestamptz;
ALTER TABLE items ADD COLUMN hold_s integer CHECK (hold_s BETWEEN 1 AND 86400);
ALTER TABLE items ADD CONSTRAINT window_in_order CHECK (starts_at < ends_at);
