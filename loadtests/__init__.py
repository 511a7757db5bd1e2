"""The harness around the product, grouped by what each part is for: `sale`
(the clients every driver shares), `checks` (the invariant checks after a run),
`chaos` (the Jepsen-style workload, history and checker), `loadtest` (the
Locust runner) with `scenarios` (its locustfiles), and `bench` (the side-by-side
benchmark). The floors are drawn in pyproject.toml's import-linter contracts and
docs/architecture.md."""
