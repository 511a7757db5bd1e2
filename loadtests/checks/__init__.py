"""The invariant checks after a run, against Postgres, the stock filter and the
events topic, with SQL of their own (`.sql` files here) so a check never shares
a bug with the store it checks. May import `loadtests.sale.sale` and `services`."""
