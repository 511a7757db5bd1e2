from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import SettingsError
from services.settings import Settings
from services.store.migrate import migration_files
from services.store.purchases import NOTIFY_PAYLOAD_BYTES, notify_payloads
from services.store.queries import QUERIES, parse_queries


def test_settings_from_env_converts_types() -> None:
    settings = Settings.from_env(
        {
            "FLASHSALE_PARTITIONS": "7",
            "FLASHSALE_REDIS_CLUSTER": "true",
            "FLASHSALE_SESSION_TIMEOUT_S": "12.5",
            "FLASHSALE_STATE_DIR": "/tmp/x",
        }
    )
    assert settings.partitions == 7
    assert settings.redis_cluster is True
    assert settings.session_timeout_s == 12.5
    assert settings.state_dir == Path("/tmp/x")


def test_settings_round_trip_through_env() -> None:
    settings = Settings.from_env({}, partitions=3, secret="abc", redis_cluster=True)
    assert Settings.from_env(settings.as_env()) == settings


@pytest.mark.parametrize(
    "env",
    [
        {"FLASHSALE_PARTITIONS": "many"},
        {"FLASHSALE_PARTITIONS": "0"},
        {"FLASHSALE_REDIS_CLUSTER": "perhaps"},
        {"FLASHSALE_SESSION_TIMEOUT_S": "0.5"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="FLASHSALE_"):
        Settings.from_env(env)


def test_redacted_hides_secrets() -> None:
    shown = Settings.from_env({}, secret="topsecret", admin_token="admintoken").redacted()
    assert "topsecret" not in str(shown) and "admintoken" not in str(shown)


def test_every_query_file_parses_and_names_are_unique() -> None:
    assert {"apply_batch", "lock_lease"} & set(QUERIES) == {"lock_lease"}
    assert parse_queries("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;") == {
        "a": "SELECT 1;",
        "b": "SELECT 2;",
    }
    with pytest.raises(Exception, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


def test_migrations_are_numbered_in_order() -> None:
    versions = [version for version, _, _ in migration_files()]
    assert versions == sorted(set(versions)) and versions[0] == 1


def test_notify_payloads_fit_the_limit_and_keep_every_id() -> None:
    ids = [f"p_{n:032x}" for n in range(1000)]
    payloads = notify_payloads(ids)
    assert all(len(p) <= NOTIFY_PAYLOAD_BYTES for p in payloads)
    assert [pid for p in payloads for pid in p.split(",")] == ids
