"""The baseline servers' command line reads back what the bench meant to start."""

from __future__ import annotations

import pytest

from loadtests.bench.baselines import BaselineConfig, parse_arguments, server_arguments


@pytest.mark.parametrize("secret", ["plain-secret", "-starts-with-a-dash", "--looks-like-a-flag"])
def test_arguments_round_trip_whatever_the_secret_begins_with(secret: str) -> None:
    # token_urlsafe secrets begin with "-" one time in 64: the bench then failed
    # with "argument --secret: expected one argument".
    config = BaselineConfig(
        mode="postgres_row",
        secret=secret,
        database_url="postgresql://u@127.0.0.1:1/db",
        redis_url="redis://127.0.0.1:2/0",
        lock_ttl_ms=250,
        pause_ms=7,
        local_queue=True,
    )
    parsed, fd = parse_arguments([*server_arguments(config), "--fd", "9"])
    assert (parsed, fd) == (config, 9)
