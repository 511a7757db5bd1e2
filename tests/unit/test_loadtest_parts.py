"""The pure parts of `flashsale loadtest`: plans, parameters, results files, percentiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.checks.filtercheck import FilterReading
from loadtests.loadtest.locust_stats import (
    EndpointStats,
    combine,
    load_stats,
    merge,
    percentile_ms,
    save_stats,
)
from loadtests.loadtest.plans import DEFAULT_USERS, MULTI_ITEM_COUNT, plan_items
from loadtests.loadtest.runner import answer_violations
from loadtests.scenarios import SCENARIOS, locustfile_path
from loadtests.scenarios.params import ScenarioParams
from loadtests.scenarios.results import MAX_EXAMPLES, KeyAnswers, ScenarioResults, worker_path
from services.tokens import valid_user_id


def test_every_scenario_has_a_locustfile_a_plan_and_a_default() -> None:
    for scenario in SCENARIOS:
        assert locustfile_path(scenario).is_file()
        assert plan_items(scenario, "abc123")
        assert DEFAULT_USERS[scenario] > 0
    with pytest.raises(ValueError):
        locustfile_path("../../etc/passwd")


def test_multi_item_popularity_falls_with_rank() -> None:
    items = plan_items("multi-item", "abc123")
    assert len(items) == MULTI_ITEM_COUNT
    weights = [item.weight for item in items]
    assert weights == sorted(weights, reverse=True) and weights[-1] > 0
    assert len({item.stock for item in items}) > 3


def test_abusive_decoy_is_last_and_never_chosen() -> None:
    items = plan_items("abusive", "abc123")
    assert items[-1].weight == 0 and all(item.weight > 0 for item in items[:-1])


def test_ids_fit_the_gateway_rules() -> None:
    params = ScenarioParams("http://127.0.0.1:1", "s", "abc123", plan_items("spike", "abc123"), "")
    assert valid_user_id(params.user_prefix("hammer") + "0" * 16)
    for scenario in SCENARIOS:
        for item in plan_items(scenario, "abc123"):
            assert len(item.item_id) <= 64


def test_params_travel_through_the_environment() -> None:
    params = ScenarioParams(
        "http://127.0.0.1:8080", "secret", "abc123", plan_items("multi-item", "abc123"), "/r.json"
    )
    assert ScenarioParams.from_env(params.to_env()) == params
    with pytest.raises(KeyError, match="flashsale loadtest"):
        ScenarioParams.from_env({})


def test_holds_and_the_payment_token_travel_to_the_cancellations_scenario() -> None:
    items = plan_items("cancellations", "abc123")
    assert [item.hold_s for item in items] == [None, 2]
    params = ScenarioParams("http://127.0.0.1:8080", "s", "abc123", items, "", admin_token="adm")
    assert ScenarioParams.from_env(params.to_env()) == params


def test_a_filter_reading_agrees_only_when_units_and_flight_make_stock_minus_sold() -> None:
    assert FilterReading("i", 3, 2, 5).agrees
    assert FilterReading("i", 4, 2, 5).drift == 1  # a unit back on sale twice
    assert FilterReading("i", 2, 2, 5).drift == -1  # a returned unit lost
    assert not FilterReading("i", None, 0, 0).agrees  # a shard missing


def test_results_file_round_trips(tmp_path: Path) -> None:
    results = ScenarioResults(
        answers={"POST /v1/purchases": {"202": 3, "409": 7}},
        accepted=["p_1", "p_2", "p_3"],
        keys=[KeyAnswers("u", "k", ("p_1",))],
        finals={"confirmed": 3},
        broken_rules={"bad input: x -> 500": 1},
        examples=["bad input: x: must be 4xx"],
        buyers=10,
    )
    path = tmp_path / "results.json"
    results.save(path)
    assert ScenarioResults.load(path) == results
    assert any("bad input: x -> 500: 1" in line for line in answer_violations(results))
    assert answer_violations(ScenarioResults()) == []


def test_percentiles_follow_locust_histograms() -> None:
    assert percentile_ms({}, 0.5) == 0.0
    histogram = {10: 50, 20: 40, 300: 9, 2000: 1}
    assert percentile_ms(histogram, 0.5) == 10.0
    assert percentile_ms(histogram, 0.9) == 20.0
    assert percentile_ms(histogram, 0.99) == 300.0
    assert percentile_ms(histogram, 1.0) == 2000.0
    merged = merge(
        [EndpointStats("a", "POST", 2, 0, {5: 2}), EndpointStats("b", "POST", 1, 0, {5: 1})]
    )
    assert merged == {5: 3}


def test_workers_results_merge_into_one_run() -> None:
    """Each Locust worker writes its own results; the check must see them as one run."""
    one = ScenarioResults(
        answers={"POST /v1/purchases": {"202": 2, "409": 5}, "GET poll": {"200": 2}},
        accepted=["p_1", "p_2"],
        keys=[KeyAnswers("u1", "k", ("p_1",)), KeyAnswers("u2", "k", ("p_2",))],
        finals={"confirmed": 2},
        broken_rules={"bad -> 500": 1},
        examples=[f"one {n}" for n in range(MAX_EXAMPLES)],
        buyers=7,
    )
    other = ScenarioResults(
        answers={"POST /v1/purchases": {"202": 1, "429": 3}},
        accepted=["p_3", "p_1"],
        keys=[KeyAnswers("u2", "k", ("p_9",)), KeyAnswers("u3", "k", ())],
        finals={"confirmed": 1, "rejected": 1},
        broken_rules={"bad -> 500": 2, "poll -> 404": 1},
        examples=["other 0"],
        buyers=4,
    )
    merged = ScenarioResults.merge([one, other])
    assert merged.answers == {
        "POST /v1/purchases": {"202": 3, "409": 5, "429": 3},
        "GET poll": {"200": 2},
    }
    assert merged.accepted == ["p_1", "p_2", "p_3"]
    # A key answered with different ids in two workers still shows both ids.
    assert sorted(merged.keys, key=lambda k: k.user_id) == [
        KeyAnswers("u1", "k", ("p_1",)),
        KeyAnswers("u2", "k", ("p_2", "p_9")),
        KeyAnswers("u3", "k", ()),
    ]
    assert merged.finals == {"confirmed": 3, "rejected": 1}
    assert merged.broken_rules == {"bad -> 500": 3, "poll -> 404": 1}
    assert len(merged.examples) == MAX_EXAMPLES and merged.buyers == 11
    assert ScenarioResults.merge([one]) == one
    assert ScenarioResults.merge([]) == ScenarioResults()


def test_workers_statistics_add_up_and_round_trip(tmp_path: Path) -> None:
    buy, poll = "POST /v1/purchases", "GET /v1/purchases/[id]?wait"
    combined = combine(
        [
            [
                EndpointStats(buy, "POST", 3, 1, {5: 2, 40: 1}),
                EndpointStats(poll, "GET", 1, 0, {9: 1}),
            ],
            [EndpointStats(buy, "POST", 2, 0, {5: 1, 700: 1})],
        ]
    )
    assert combined == [
        EndpointStats(poll, "GET", 1, 0, {9: 1}),
        EndpointStats(buy, "POST", 5, 1, {5: 3, 40: 1, 700: 1}),
    ]
    path = tmp_path / "locust.json"
    save_stats(path, combined)
    assert load_stats(path) == combined
    assert worker_path(path, 1) == tmp_path / "locust.w1.json"
