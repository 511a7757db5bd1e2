"""Secret checks and the state folder's secrets file (issue 9, findings 7 and 14)."""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import pytest

from infra.statesecrets import SECRETS_FILE, stack_secrets
from services.errors import SettingsError
from services.settings import MIN_SECRET_BYTES, Settings

GOOD = secrets.token_urlsafe(32)


@pytest.mark.parametrize(
    ("secret", "admin_token", "message"),
    [
        ("", GOOD, "FLASHSALE_SECRET is not set"),
        ("s" * (MIN_SECRET_BYTES - 1), GOOD, "FLASHSALE_SECRET is too short"),
        (GOOD, "", "FLASHSALE_ADMIN_TOKEN is not set"),
        (GOOD, "a" * (MIN_SECRET_BYTES - 1), "FLASHSALE_ADMIN_TOKEN is too short"),
    ],
    # GOOD is random: ids of its own would differ between pytest-xdist's workers.
    ids=["secret-unset", "secret-short", "admin-token-unset", "admin-token-short"],
)
def test_require_secrets_refuses_missing_or_short(
    secret: str, admin_token: str, message: str
) -> None:
    settings = Settings.from_env({}, secret=secret, admin_token=admin_token)
    with pytest.raises(SettingsError, match=message):
        settings.require_secrets()


def test_require_secrets_takes_long_ones_and_validate_does_not_ask() -> None:
    Settings.from_env({}, secret="s" * MIN_SECRET_BYTES, admin_token=GOOD).require_secrets()
    Settings.from_env({}).validate()  # consumers and tools need no secret
    Settings.from_env({}, secret=GOOD).require_signing_secret()


def test_state_secrets_are_made_once_then_read_back(tmp_path: Path) -> None:
    first = stack_secrets(tmp_path, Settings.from_env({}))
    second = stack_secrets(tmp_path, Settings.from_env({}))
    assert (second.secret, second.admin_token) == (first.secret, first.admin_token)
    assert len(first.secret.encode()) >= MIN_SECRET_BYTES
    assert first.secret != first.admin_token
    assert stat.S_IMODE((tmp_path / SECRETS_FILE).stat().st_mode) == 0o600


def test_explicit_secrets_win_over_the_file(tmp_path: Path) -> None:
    kept = stack_secrets(tmp_path, Settings.from_env({}))
    explicit = secrets.token_urlsafe(32)
    chosen = stack_secrets(tmp_path, Settings.from_env({}, secret=explicit))
    assert chosen.secret == explicit and chosen.admin_token == kept.admin_token
    assert stack_secrets(tmp_path, Settings.from_env({})).secret == kept.secret


def test_a_short_explicit_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="too short"):
        stack_secrets(tmp_path, Settings.from_env({}, secret="short"))


def test_a_damaged_secrets_file_is_named(tmp_path: Path) -> None:
    (tmp_path / SECRETS_FILE).write_text(json.dumps({"secret": 1}))
    with pytest.raises(SettingsError, match=SECRETS_FILE):
        stack_secrets(tmp_path, Settings.from_env({}))


def test_a_refused_secret_is_not_kept(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        stack_secrets(tmp_path, Settings.from_env({}, secret="short"))
    assert not (tmp_path / SECRETS_FILE).exists()
