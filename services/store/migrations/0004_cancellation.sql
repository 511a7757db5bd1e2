-- A purchase's status moves on after it is final (api.md): a confirmed purchase
-- can be cancelled, and for items with hold_s be paid or expire.
ALTER TABLE purchases DROP CONSTRAINT purchases_status_check;
ALTER TABLE purchases ADD CONSTRAINT purchases_status_check
    CHECK (status IN ('confirmed', 'rejected', 'cancelled', 'paid', 'expired'));
