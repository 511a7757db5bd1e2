"""The services' pool hands connections back without asyncpg's reset query
(services/store/db.py, `stateless`): this holds only while no query of theirs
leaves session state on a pooled connection. The SQL and code they run, read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DIRS = ("services", "consumers", "gateway")
# Session state that would outlive a query: a session advisory lock (the _xact_
# kind ends with its transaction), LISTEN, a cursor, a temporary table, a SET
# that is not SET LOCAL. In .sql files a SET or LISTEN counts where a statement
# starts (not an UPDATE's SET line); in Python, inside a string.
ANYWHERE = (
    r"pg_advisory_lock|pg_try_advisory_lock\b|\bTEMP(?:ORARY)?\s+TABLE|set_config\([^)]*false"
)
SQL_STATE = re.compile(
    rf"(?:\A|;)\s*(?:--[^\n]*\n\s*)*(?:SET\s+(?!LOCAL\b)|LISTEN\b|DECLARE\b)|{ANYWHERE}",
    re.IGNORECASE,
)
# Our SQL keywords are upper case: a docstring's "Set ..." is prose.
PY_STATE = re.compile(rf"[\"'](?:SET\s+(?!LOCAL\b)|LISTEN\s|DECLARE\s)|{ANYWHERE}")


def _found(path: Path) -> list[str]:
    pattern = SQL_STATE if path.suffix == ".sql" else PY_STATE
    return [match.group(0) for match in pattern.finditer(path.read_text())]


def _sources() -> list[Path]:
    return [
        path
        for folder in SERVICE_DIRS
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".sql", ".py"}
    ]


def test_no_service_query_leaves_session_state() -> None:
    found = {str(path.relative_to(ROOT)): _found(path) for path in _sources()}
    assert {path: hits for path, hits in found.items() if hits} == {}


def test_the_only_listener_has_a_connection_of_its_own() -> None:
    listeners = [path for path in _sources() if "add_listener(" in path.read_text()]
    assert [p.relative_to(ROOT).as_posix() for p in listeners] == [
        "services/store/notifications.py"
    ]
    assert "asyncpg.connect(" in (ROOT / "services/store/notifications.py").read_text()


def test_the_patterns_find_what_they_look_for() -> None:
    for sql in ("SELECT pg_advisory_lock(1)", "SELECT 1;\nLISTEN results", "SET search_path = x"):
        assert SQL_STATE.search(sql), sql
    for sql in ("SELECT pg_advisory_xact_lock(1)", "UPDATE t\nSET a = 1", "SET LOCAL x = 1"):
        assert not SQL_STATE.search(sql), sql
    assert PY_STATE.search('await conn.execute("SET search_path = x")')
    assert not PY_STATE.search("# a SET outside a transaction, LISTEN")
