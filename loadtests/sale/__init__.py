"""What every load driver shares: where a stack answers (`target`), the gateway
and the admin API as clients call them, and the in-process sale drivers (one
burst of buyers, steady fault-run traffic). May import `services` only."""
