"""Named SQL queries loaded from `.sql` files with `-- name: <query>` headers."""

from __future__ import annotations

from importlib import resources

from services.errors import FlashsaleError

HEADER = "-- name:"


def parse_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith(HEADER):
            if name is not None:
                queries[name] = "\n".join(lines).strip()
            name = line[len(HEADER) :].strip()
            if name in queries:
                raise FlashsaleError(f"query {name!r} defined twice")
            lines = []
        elif name is not None:
            lines.append(line)
    if name is not None:
        queries[name] = "\n".join(lines).strip()
    return queries


def load_queries() -> dict[str, str]:
    folder = resources.files("services.store") / "sql"
    queries: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            queries.update(parse_queries(entry.read_text()))
    return queries


QUERIES = load_queries()


def query(name: str) -> str:
    try:
        return QUERIES[name]
    except KeyError as exc:
        raise FlashsaleError(f"no SQL query named {name!r}") from exc
