"""`flashsale migrate` (the deployments' migration job) and `flashsale sale` (a sale
against a deployed stack's address), run as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys

import asyncpg

from services.settings import Settings
from tests.integration.conftest import LiveStack

COMMAND_TIMEOUT_S = 120


def flashsale(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


async def test_migrate_creates_the_schema_once(settings: Settings) -> None:
    name = f"migrate_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(settings.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        url = settings.database_url.rsplit("/", 1)[0] + f"/{name}"
        env = {"FLASHSALE_DATABASE_URL": url}
        first = await asyncio.to_thread(flashsale, ["migrate"], env)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("applied: 0001_init.sql")
        again = await asyncio.to_thread(flashsale, ["migrate"], env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "schema up to date"
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('purchases') IS NOT NULL")
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_migrate_without_a_database_url_is_a_usage_error() -> None:
    done = await asyncio.to_thread(flashsale, ["migrate"], {"FLASHSALE_DATABASE_URL": ""})
    assert done.returncode == 2
    assert "FLASHSALE_DATABASE_URL" in done.stderr


async def test_sale_runs_against_a_stacks_address(live: LiveStack) -> None:
    env = {
        key: value
        for key, value in live.settings.as_env().items()
        if key in {"FLASHSALE_ADMIN_TOKEN", "FLASHSALE_SECRET", "FLASHSALE_DATABASE_URL"}
    }
    args = ["sale", "--url", live.url, "--buyers", "40", "--stock", "7"]
    done = await asyncio.to_thread(flashsale, args, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answered 202: 7" in done.stdout
    assert "final confirmed: 7" in done.stdout
    assert "invariants: ok" in done.stdout
