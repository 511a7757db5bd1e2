"""Apply the numbered `.sql` files in migrations/ once each, under an advisory lock."""

from __future__ import annotations

from importlib import resources

from services.store.db import Connection

MIGRATIONS_PACKAGE = "services.store"
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 7_202_611


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files(MIGRATIONS_PACKAGE) / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: Connection) -> list[str]:
    """Bring the schema up to date; returns the names of the files applied now."""
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied_now.append(name)
    return applied_now
