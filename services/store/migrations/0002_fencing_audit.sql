-- Who applied each purchase, under which lease epoch: the fencing invariant
-- (a later offset is never applied under an older epoch) becomes checkable.
ALTER TABLE purchases ADD COLUMN lease_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE purchases ADD COLUMN applied_by text;
