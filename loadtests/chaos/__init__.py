"""`flashsale chaos`'s harness: the workload that records every client operation
in a history, the Postgres snapshot, and the Jepsen-style checker whose rules
judge the history against api.md and design.md. May import `loadtests.sale.sale`,
`loadtests.checks` and `services`; the nemesis that injects faults is infra's."""
