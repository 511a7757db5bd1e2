"""The checkers' own SQL files (faultcheck.sql, invariants.sql), loaded by name.

On purpose not `services.store`'s named queries: a check that read Postgres
through the store it checks would share the store's bugs and miss them. The
`.sql` format (`-- name:` headers) is the store's, parsed by its parser: only
the queries are the checkers' own.
"""

from __future__ import annotations

from importlib import resources

from services.store.queries import parse_queries


def checker_queries(file: str) -> dict[str, str]:
    """The queries of `loadtests/checks/<file>`, by name."""
    return parse_queries((resources.files("loadtests.checks") / file).read_text())
