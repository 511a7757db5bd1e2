"""Every series the Grafana dashboard queries is exported by a running gateway or consumer.

A gateway and a consumer of their own (their own topic and group, the consumer
serving /metrics) run a purchase; then each PromQL expression of
infra/deploy/grafana/dashboards/flashsale.json is parsed, and each metric it
selects, with its label matchers and its `by (...)` labels, must be in a scrape.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from infra.embedded.proc import free_port, terminate_pid
from infra.processes import start_consumer, start_gateway
from services.settings import Settings
from services.tokens import issue_token
from tests.conftest import fresh_id, wait_for

DEPLOY = Path(__file__).parents[2] / "infra" / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
SCALED_OBJECT = DEPLOY / "k8s" / "consumer-scaledobject.yaml"
# Labels Prometheus adds at scrape time (prometheus-kubernetes.yml), not the exporters.
SCRAPE_LABELS = re.compile(r'\s*,?\s*namespace\s*=\s*"[^"]*"')
SELECTOR = re.compile(r"\b(flashsale_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Every other word an expression may hold: functions, keywords, duration units.
PROMQL_WORDS = {"sum", "max", "min", "avg", "rate", "increase", "histogram_quantile", "by", "m"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted(DASHBOARD.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def autoscaler_exprs() -> list[str]:
    """The KEDA trigger's queries, less the labels the scrape adds."""
    scaled = yaml.safe_load(SCALED_OBJECT.read_text())
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    return [SCRAPE_LABELS.sub("", query).replace("{}", "") for query in queries]


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = {
        source["uid"]
        for path in DATASOURCES.glob("*.yaml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    used = {
        target["datasource"]["uid"]
        for path in DASHBOARD.glob("*.json")
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    }
    assert used and used <= provisioned
    assert autoscaler_exprs() == ["sum(max by (partition) (flashsale_partition_lag))"]


def parse_scrape(text: str) -> list[Sample]:
    return [
        Sample(sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def missing_series(expr: str, samples: list[Sample]) -> list[str]:
    """What `expr` selects that no sample has (empty: every selector matches a sample)."""
    problems = []
    selected: list[Sample] = []
    for name, braces in SELECTOR.findall(expr):
        matchers = MATCHER.findall(braces or "")
        found = [
            s
            for s in samples
            if s.name == name
            and all(s.labels.get(label) == value for label, op, value in matchers if op == "=")
        ]
        if not found:
            problems.append(f"{name}{braces}")
        selected += found
    for group in GROUPING.findall(expr):
        for label in (word.strip() for word in group.split(",")):
            if not any(label in s.labels for s in selected):
                problems.append(f"label {label!r}")
    rest = SELECTOR.sub(" ", re.sub(r'"[^"]*"', " ", expr))
    rest = GROUPING.sub(" ", rest)
    problems += [
        f"unknown word {word!r}"
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)
        if word not in PROMQL_WORDS
    ]
    return problems


def test_the_expression_parser_finds_what_is_not_exported() -> None:
    samples = [Sample("flashsale_admitted_total", {}), Sample("x_bucket", {"le": "1"})]
    assert missing_series("sum(rate(flashsale_admitted_total[1m]))", samples) == []
    assert missing_series("sum(rate(flashsale_nothing_total[1m]))", samples) == [
        "flashsale_nothing_total"
    ]
    assert missing_series('sum(flashsale_admitted_total{a="b"})', samples) == [
        'flashsale_admitted_total{a="b"}'
    ]
    assert missing_series("sum by (status) (flashsale_admitted_total)", samples) == [
        "label 'status'"
    ]
    assert missing_series("sum(rate(other_metric[1m]))", samples) == ["unknown word 'other_metric'"]
    assert len(dashboard_exprs()) >= 10


@pytest.fixture
def own_stack(settings: Settings) -> Iterator[tuple[Settings, int]]:
    """A gateway and a consumer on a topic and group of their own."""
    own = settings.replace(
        topic=f"metrics-{secrets.token_hex(3)}",
        consumer_group=f"metrics-{secrets.token_hex(3)}",
        gateway_port=free_port(),
        consumer_metrics_port=free_port(),
    )
    logs = settings.state_dir / "logs"
    consumer = start_consumer(own, logs, "metrics-consumer")
    pids = [consumer]
    try:
        pids.append(start_gateway(own, logs, index=90))
        yield own, own.consumer_metrics_port
    finally:
        for pid in pids:
            terminate_pid(pid, grace_s=10)


async def test_every_dashboard_series_is_exported(own_stack: tuple[Settings, int]) -> None:
    own, consumer_port = own_stack
    url = f"http://127.0.0.1:{own.gateway_port}"
    item_id = fresh_id("graf")
    async with aiohttp.ClientSession() as http:
        admin = {"Authorization": f"Bearer {own.admin_token}"}
        async with http.put(f"{url}/v1/items/{item_id}", json={"stock": 2}, headers=admin) as r:
            assert r.status == 201
        for n in range(3):  # two admitted, one sold out
            token = issue_token(own.secret, f"graf-user-{n}", 3600)
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"k{n}"}
            body = {"item_id": item_id}
            async with http.post(f"{url}/v1/purchases", json=body, headers=headers) as r:
                assert r.status == (202 if n < 2 else 409)

        async def scrape(target: str) -> str:
            async with http.get(target) as response:
                assert response.status == 200
                return await response.text()

        consumer_url = f"http://127.0.0.1:{consumer_port}/metrics"
        gateway_url = f"{url}/metrics"

        async def applied() -> list[Sample] | None:
            samples = parse_scrape(await scrape(consumer_url)) + parse_scrape(
                await scrape(gateway_url)
            )
            names = {s.name for s in samples}
            wanted = {"flashsale_consumer_lag", "flashsale_partition_lag", "flashsale_item_sold"}
            sold = [s for s in samples if s.name == "flashsale_item_sold"]
            return samples if wanted <= names and sold else None

        samples = await wait_for(applied, timeout_s=60, interval_s=0.5)
    problems = {
        expr: missing_series(expr, samples) for expr in dashboard_exprs() + autoscaler_exprs()
    }
    assert {expr: p for expr, p in problems.items() if p} == {}
