"""`flashsale loadtest` as an operator runs it: every scenario, briefly, on a detached stack.

No speed is asserted anywhere: a shared 2-core machine decides how many buyers
a few seconds see. What must hold whatever the speed: the command exits 0
(every invariant held), bad input got 4xx, and the checks it relies on do
catch a broken rule when one is put in front of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from infra.stackfile import StackFile
from loadtests.filtercheck import check_filter
from loadtests.lifecycle import check_events
from loadtests.salecheck import SaleExpectations, check_sale
from loadtests.target import EventsAccess, FilterAccess
from loadtests.topiccheck import check_topic
from services.stockfilter.client import close_redis, open_redis
from services.stockfilter.keys import stock_key
from services.tokens import issue_token
from tests.conftest import fresh_id

FLASHSALE = [sys.executable, "-m", "infra.cli"]
LOADTEST = [
    sys.executable,
    "-c",
    "from infra.loadtest_command import loadtest; loadtest(prog_name='flashsale loadtest')",
]
USERS = "20"
DURATION_S = "5"


def run(
    command: list[str], state_dir: Path, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_STATE_DIR"] = str(state_dir)
    # The repository on the import path, also when the command runs elsewhere.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["FLASHSALE_POSTGRES_FSYNC"] = "false"
    env["FLASHSALE_PARTITIONS"] = "4"
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=cwd
    )


@pytest.fixture(scope="module")
def stack_dir(state_root: Path) -> Iterator[Path]:
    state_dir = state_root / "loadtest-stack"
    started = run([*FLASHSALE, "up", "--detach", "--port", "0"], state_dir, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        yield state_dir
    finally:
        stopped = run([*FLASHSALE, "down"], state_dir)
        assert stopped.returncode == 0 or "no stack file" in stopped.stderr, stopped.stderr


def loadtest(
    state_dir: Path, scenario: str, duration_s: str = DURATION_S, processes: str = "1"
) -> dict[str, object]:
    result = run(
        [
            *LOADTEST,
            scenario,
            *("--users", USERS, "--duration", duration_s, "--processes", processes, "--json"),
        ],
        state_dir,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    summary: dict[str, object] = json.loads(result.stdout)
    assert summary["ok"] is True and summary["violations"] == []
    return summary


def test_without_a_running_stack_it_is_a_usage_error(tmp_path: Path) -> None:
    result = run([*LOADTEST, "spike"], tmp_path)
    assert result.returncode == 2
    assert "flashsale up --detach" in result.stderr


def test_help_names_every_scenario_and_setting(tmp_path: Path) -> None:
    result = run([*LOADTEST, "--help"], tmp_path)
    assert result.returncode == 0
    words = ("spike", "retry-storm", "multi-item", "abusive", "cancellations")
    for word in (*words, "FLASHSALE_LOADTEST_USERS", "FLASHSALE_LOADTEST_PROCESSES"):
        assert word in result.stdout


def test_a_relative_state_folder_works_as_a_new_user_has_it(stack_dir: Path) -> None:
    """`.flashsale` relative to where the user stands (Locust runs in the run's own
    folder: it was handed paths relative to the old one and wrote nothing found)."""
    relative = Path(stack_dir.name)
    result = run(
        [*LOADTEST, "spike", "--users", USERS, "--duration", "3", "--json"],
        relative,
        cwd=stack_dir.parent,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert json.loads(result.stdout)["ok"] is True
    assert list((stack_dir / "loadtests").glob("*-spike-*/locust.json"))


@pytest.mark.parametrize("scenario", ["spike", "retry-storm", "multi-item", "abusive"])
def test_scenario_keeps_every_invariant(stack_dir: Path, scenario: str) -> None:
    summary = loadtest(stack_dir, scenario)
    answers = summary["answers"]
    assert isinstance(answers, dict) and answers
    assert isinstance(summary["requests"], int) and summary["requests"] > 0
    assert isinstance(summary["confirmed_units"], int) and isinstance(summary["stock"], int)
    assert summary["confirmed_units"] <= summary["stock"]
    if scenario == "abusive":
        bad_input = {name: counts for name, counts in answers.items() if name.startswith("bad")}
        assert bad_input
        for counts in bad_input.values():
            assert all(label.startswith("4") or label in ("timeout", "error") for label in counts)


def test_spike_in_two_locust_processes_keeps_every_invariant(stack_dir: Path) -> None:
    """Locust's master and two forked workers: each worker writes its own statistics
    and results, and the merged run is checked like one process's. Every purchase
    answered is in both merged files (Locust's master alone misses the requests a
    worker finishes while it stops)."""
    summary = loadtest(stack_dir, "spike", processes="2")
    assert summary["processes"] == 2
    answers = summary["answers"]
    assert isinstance(answers, dict)
    answered = sum(answers["POST /v1/purchases"].values())
    folder = Path(str(summary["folder"]))
    stats = json.loads((folder / "locust.json").read_text())
    posts = [entry for entry in stats if entry["name"] == "POST /v1/purchases"]
    assert answered > 0 and [entry["num_requests"] for entry in posts] == [answered]
    assert sorted(path.name for path in folder.glob("results.w*.json")) == [
        "results.w0.json",
        "results.w1.json",
    ]
    workers = [json.loads((folder / f"results.w{i}.json").read_text()) for i in (0, 1)]
    assert all(worker["buyers"] > 0 for worker in workers)  # both workers had users
    assert summary["buyers"] == sum(worker["buyers"] for worker in workers)


def test_cancellations_sell_returned_units_again_and_keep_every_invariant(
    stack_dir: Path,
) -> None:
    """Cancels, in-time and late payments and expiries while the sale runs: the
    check (sold == confirmed + paid, returned units sold again or back in the
    filter, an event published for every status change) passes, and each kind of
    change really happened."""
    summary = loadtest(stack_dir, "cancellations", duration_s="8")
    for status in ("cancelled", "paid", "expired"):
        count = summary[status]
        assert isinstance(count, int) and count > 0, (status, summary)
    assert isinstance(summary["returned_units"], int) and summary["returned_units"] > 0
    answers = summary["answers"]
    assert isinstance(answers, dict)
    assert answers["POST /v1/purchases/[id]/cancel"].get("200", 0) > 0
    assert answers["POST /v1/purchases/[id]/pay"].get("200", 0) > 0


async def test_the_checks_catch_what_they_look_for(stack_dir: Path) -> None:
    """Fed a lost acceptance, a key answered with two ids and a missing item, the
    check reports each one: so a clean run's silence means something."""
    stack = StackFile.load(stack_dir)
    expected = SaleExpectations(
        stock={"lt-absent-item": 5},
        keys={("lt-absent-user", "key-1"): ("p_" + "a" * 32, "p_" + "b" * 32)},
    )
    report = await check_sale(stack.database_url, ["p_" + "c" * 32], expected, final_wait_s=0.5)
    text = "\n".join(report.violations)
    assert not report.ok
    assert "item missing" in text
    assert "LOST" in text
    assert "KEY" in text


async def _bought_and_cancelled(stack: StackFile, item_id: str) -> str:
    """One unit of a new item bought, confirmed and cancelled through the gateway."""
    token = issue_token(stack.secret, fresh_id(), 3600)
    user = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{stack.gateway_url}/v1/items/{item_id}",
            json={"stock": 3, "per_user_limit": 1},
            headers={"Authorization": f"Bearer {stack.admin_token}"},
        ) as response:
            assert response.status == 201
        async with http.post(
            f"{stack.gateway_url}/v1/purchases",
            json={"item_id": item_id, "quantity": 1},
            headers={**user, "Idempotency-Key": fresh_id()},
        ) as response:
            assert response.status == 202
            purchase_id = str((await response.json())["purchase_id"])
        async with http.get(
            f"{stack.gateway_url}/v1/purchases/{purchase_id}?wait=30", headers=user
        ) as response:
            assert (await response.json())["status"] == "confirmed"
        async with http.post(
            f"{stack.gateway_url}/v1/purchases/{purchase_id}/cancel", headers=user
        ) as response:
            assert response.status == 200
    return purchase_id


async def test_the_lifecycle_checks_catch_a_unit_returned_twice_and_a_lost_event(
    stack_dir: Path,
) -> None:
    """A cancelled unit put back in the filter a second time, the outbox row of the
    cancel deleted, an event marked published that never reached the topic: the
    filter, outbox and topic checks each report theirs (and say nothing before),
    so a clean cancellations run's silence means something."""
    stack = StackFile.load(stack_dir)
    settings = stack.settings()
    access = FilterAccess(stack.redis_url, stack.redis_cluster, settings.stock_shards)
    topic = EventsAccess(stack.kafka_bootstrap, settings.events_topic)
    item_id = fresh_id()
    purchase_id = await _bought_and_cancelled(stack, item_id)
    conn = await asyncpg.connect(stack.database_url)
    redis = open_redis(stack.redis_url, stack.redis_cluster)
    try:
        clean: list[str] = []
        await check_filter(conn, access, [item_id], clean, settle_wait_s=30)
        await check_events(conn, [item_id], clean, publish_wait_s=30)
        await check_topic(conn, topic, [item_id], clean, read_timeout_s=60)
        assert clean == []
        # Straight after the damage: the reconciler repairs a drift only after
        # several idle passes, and the check must see it first.
        await redis.incrby(stock_key(item_id, 0), 1)
        await conn.execute(
            "DELETE FROM purchase_events WHERE event_id = $1", f"{purchase_id}:cancelled"
        )
        # An event marked published that the relay never sent: below every
        # partition's published mark.
        await conn.execute(
            "INSERT INTO purchase_events (seq, event_id, purchase_id, user_id, item_id,"
            " quantity, status, topic, kafka_partition)"
            " VALUES (-1, $1, 'p_never', 'u', $2, 1, 'confirmed', 'purchases', 0)",
            "p_never:confirmed",
            item_id,
        )
        # A status change written twice (the table does not forbid it: see migration 0006).
        await conn.execute(
            "INSERT INTO purchase_events (seq, event_id, purchase_id, user_id, item_id,"
            " quantity, status, reason, at, topic, kafka_partition)"
            " SELECT -2, event_id, purchase_id, user_id, item_id, quantity, status, reason, at,"
            " topic, kafka_partition FROM purchase_events WHERE event_id = $1",
            f"{purchase_id}:confirmed",
        )
        found: list[str] = []
        await check_filter(conn, access, [item_id], found, settle_wait_s=0)
        await check_events(conn, [item_id], found, publish_wait_s=0)
        await check_topic(conn, topic, [item_id], found, read_timeout_s=60)
    finally:
        await close_redis(redis)
        await conn.close()
    text = "\n".join(found)
    assert "1 units went back on sale twice" in text, text
    assert f"{purchase_id}:cancelled" in text, text
    assert "1 events marked published are not on" in text and "p_never:confirmed" in text, text
    assert "1 status changes were written to the outbox twice" in text, text
