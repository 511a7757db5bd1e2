"""Each durability level of `flashsale bench --durability` starts what it says
(issue 20): `fsync` is Postgres' defaults, `replicated` adds a streaming standby
that every commit waits for, `off` turns fsync and full-page writes off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from infra.durability import DURABILITY_LEVELS, durability_settings
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.standby import EmbeddedStandby, setting
from infra.stack import EmbeddedStack
from services.errors import ServiceStartError
from services.settings import Settings
from tests.conftest import fresh_id


@pytest.mark.parametrize(
    ("level", "fsync", "standby"),
    [("fsync", True, False), ("replicated", True, True), ("off", False, False)],
)
def test_each_level_asks_the_stack_for_its_postgres(level: str, fsync: bool, standby: bool) -> None:
    assert level in DURABILITY_LEVELS
    settings = Settings.from_env({}, **durability_settings(level))
    assert (settings.postgres_fsync, settings.postgres_standby) == (fsync, standby)


@pytest.fixture
def replicated_stack(state_root: Path) -> Iterator[EmbeddedStack]:
    root = state_root / fresh_id("replicated")
    settings = Settings.from_env({}, **durability_settings("replicated"), partitions=1)
    stack = EmbeddedStack(root, settings)
    try:
        stack.start_services()
        yield stack
    finally:
        stack.stop()


@pytest.mark.timeout(120)
async def test_replicated_commits_wait_for_a_streaming_standby(
    replicated_stack: EmbeddedStack,
) -> None:
    primary, standby = replicated_stack.postgres, replicated_stack.standby
    assert standby is not None
    state = standby.replication()
    assert state is not None and (state.state, state.sync_state) == ("streaming", "sync")
    for name, value in (("fsync", "on"), ("full_page_writes", "on"), ("synchronous_commit", "on")):
        assert setting(primary, name) == value
    assert setting(standby, "transaction_read_only") == "on"  # a standby, not a copy
    # A commit the primary acknowledged is on the standby (remote_apply is not asked
    # for, so wait for the replay; the commit itself waited for the standby's flush).
    conn = await asyncpg.connect(primary.url)
    try:
        await conn.execute(
            "CREATE TABLE durability_probe (x int); INSERT INTO durability_probe VALUES (7)"
        )
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    finally:
        await conn.close()
    replica = await asyncpg.connect(standby.url)
    try:
        caught_up = await replica.fetchval(
            "SELECT pg_last_wal_receive_lsn() >= $1::text::pg_lsn", lsn
        )
        assert caught_up  # synchronous: flushed on the standby before the commit returned
    finally:
        await replica.close()


def test_the_quick_level_turns_fsync_off(state_root: Path) -> None:
    server = EmbeddedPostgres(state_root / fresh_id("pg-off"), fsync=False)
    server.start()
    try:
        assert setting(server, "fsync") == "off"
        assert setting(server, "full_page_writes") == "off"
    finally:
        server.stop()


def test_a_standby_needs_a_running_primary(state_root: Path) -> None:
    standby = EmbeddedStandby(state_root / fresh_id("orphan"), primary=None)
    with pytest.raises(ServiceStartError, match="running primary"):
        standby.start()
