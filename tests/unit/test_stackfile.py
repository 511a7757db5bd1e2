"""stack.json: the lock around its rewrites, and the identities that guard its pids."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.embedded.proc import process_identity
from infra.stackfile import StackFile, StackPids, stack_lock
from services.errors import FlashsaleError


def _stack(pids: StackPids, identities: dict[str, str]) -> StackFile:
    return StackFile(
        gateway_url="http://127.0.0.1:1",
        admin_token="a" * 40,
        secret="s" * 40,
        database_url="postgresql://127.0.0.1:1/x",
        redis_url="redis://127.0.0.1:1",
        redis_cluster=False,
        kafka_bootstrap="127.0.0.1:1",
        postgres_port=1,
        redis_ports=[],
        kafka_port=1,
        gateway_port=1,
        consumer_names=[],
        pids=pids,
        settings_env={"FLASHSALE_PARTITIONS": "3", "FLASHSALE_STOCK_SHARDS": "2"},
        identities=identities,
    )


def test_a_second_holder_waits_for_the_lock(tmp_path: Path) -> None:
    with stack_lock(tmp_path), pytest.raises(FlashsaleError, match="holds"):  # noqa: SIM117
        with stack_lock(tmp_path, timeout_s=0.2):
            pass
    with stack_lock(tmp_path, timeout_s=0.2):  # released by the first holder
        pass


def test_settings_come_from_the_stack_not_the_callers_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHSALE_PARTITIONS", "12")
    _stack(StackPids(), {}).save(tmp_path)
    settings = StackFile.load(tmp_path).settings()
    assert (settings.partitions, settings.stock_shards) == (3, 2)


def test_only_the_recorded_process_is_ours(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            identity = process_identity(sleeper.pid)
            assert identity is not None
            ours = _stack(StackPids(consumers=[sleeper.pid]), {str(sleeper.pid): identity})
            ours.save(tmp_path)
            assert StackFile.load(tmp_path).is_ours(sleeper.pid)
            # The command may change under the same pid (an exec): still the same process.
            execed = identity.split(" ", 1)[0] + " python -m consumers"
            assert _stack(StackPids(), {str(sleeper.pid): execed}).is_ours(sleeper.pid)
            # Another start time under the same pid (built from the parts: the
            # command line may still be empty when read right after the fork).
            boot, _, rest = identity.partition(":")
            start, _, command = rest.partition(" ")
            other_start = f"{boot}:{int(start) + 1} {command}"
            assert not _stack(StackPids(), {str(sleeper.pid): other_start}).is_ours(sleeper.pid)
            # An identity recorded for other pids only: this one is not known to be ours.
            assert not _stack(StackPids(), {str(os.getpid()): "x"}).is_ours(sleeper.pid)
        finally:
            sleeper.kill()
    assert not ours.is_ours(sleeper.pid)
