"""`flashsale loadtest`: the Locust child process, its report, what each
scenario puts on sale, and the runner that checks the invariants after it. May
import `loadtests.scenarios`, `loadtests.sale.sale`, `loadtests.checks`, `services`."""
