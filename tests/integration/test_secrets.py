"""Secrets: nothing signs or checks tokens with a missing or short key, and a stack keeps
its secret with the data it signed (issue 9, findings 7 and 14)."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infra.embedded.proc import free_port
from infra.stack import EmbeddedStack
from infra.statesecrets import SECRETS_FILE
from services.schema import purchase_id_for
from services.settings import Settings

PROCESS_TIMEOUT_S = 30
GOOD = secrets.token_urlsafe(32)


def _env_without_flashsale() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}


@pytest.mark.parametrize(
    ("secret", "admin_token", "named", "says"),
    [
        ("", GOOD, "FLASHSALE_SECRET", "not set"),
        ("x" * 31, GOOD, "FLASHSALE_SECRET", "too short"),
        (GOOD, "", "FLASHSALE_ADMIN_TOKEN", "not set"),
        (GOOD, "y" * 31, "FLASHSALE_ADMIN_TOKEN", "too short"),
    ],
    # GOOD is random: ids of its own would differ between pytest-xdist's workers.
    ids=["secret-unset", "secret-short", "admin-token-unset", "admin-token-short"],
)
def test_gateway_refuses_to_start_without_long_secrets(
    settings: Settings, secret: str, admin_token: str, named: str, says: str
) -> None:
    """With every other setting of a working gateway, so the old code would serve."""
    env = _env_without_flashsale()
    env.update(
        settings.replace(secret=secret, admin_token=admin_token, gateway_port=free_port()).as_env()
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode != 0
    assert named in result.stderr and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_token_command_refuses_a_short_secret(tmp_path: Path) -> None:
    env = _env_without_flashsale()
    env.update(FLASHSALE_SECRET="short", FLASHSALE_STATE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "token", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1
    assert "FLASHSALE_SECRET" in result.stderr and "too short" in result.stderr
    assert result.stdout == ""


def _start_services_once(state_dir: Path, **overrides: str) -> Settings:
    stack = EmbeddedStack(
        state_dir, Settings.from_env({}, postgres_fsync=False, partitions=2, **overrides)
    )
    try:
        return stack.start_services()
    finally:
        stack.stop()


def test_up_twice_on_one_state_folder_keeps_the_secret(state_root: Path) -> None:
    """After down and up, a retry with the same key must get the same purchase id."""
    state_dir = state_root / f"secrets-{secrets.token_hex(3)}"
    first = _start_services_once(state_dir)
    second = _start_services_once(state_dir)
    assert second.secret == first.secret and second.admin_token == first.admin_token
    assert purchase_id_for(second.secret, "alice", "k-1") == purchase_id_for(
        first.secret, "alice", "k-1"
    )
    mode = stat.S_IMODE((state_dir / SECRETS_FILE).stat().st_mode)
    assert mode == 0o600
    explicit = secrets.token_urlsafe(32)
    assert _start_services_once(state_dir, secret=explicit).secret == explicit
