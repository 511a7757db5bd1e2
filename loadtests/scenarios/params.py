"""What the runner tells a locustfile, through environment variables of the Locust process."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_GATEWAY_URL = "FLASHSALE_LT_GATEWAY_URL"
ENV_SECRET = "FLASHSALE_LT_SECRET"
ENV_RUN_ID = "FLASHSALE_LT_RUN_ID"
ENV_ITEMS = "FLASHSALE_LT_ITEMS"
ENV_RESULTS = "FLASHSALE_LT_RESULTS"
ENV_RESULT_WAIT_S = "FLASHSALE_LT_RESULT_WAIT_S"
ENV_ADMIN_TOKEN = "FLASHSALE_LT_ADMIN_TOKEN"
ENV_STATS = "FLASHSALE_LT_STATS"


@dataclass(frozen=True, slots=True)
class ItemSpec:
    item_id: str
    stock: int
    per_user_limit: int
    # Relative popularity: buyers pick items with these weights.
    weight: float = 1.0
    # Units sell on hold: a confirmed purchase must be paid within this many seconds.
    hold_s: int | None = None


@dataclass(frozen=True, slots=True)
class ScenarioParams:
    gateway_url: str
    secret: str
    # Every user id and item id of a run starts with "lt-<run_id>-".
    run_id: str
    items: tuple[ItemSpec, ...]
    results_path: str
    # How long one GET /v1/purchases/{id}?wait= may hold the answer.
    result_wait_s: float = 10.0
    # The payment system's token (admin): only scenarios that pay holds get it.
    admin_token: str = ""
    # Locust's JSON report: with several Locust processes each worker writes its
    # own request statistics beside it (the master's miss the last ones).
    stats_path: str = ""

    def user_prefix(self, role: str) -> str:
        return f"lt-{self.run_id}-{role}-"

    def to_env(self) -> dict[str, str]:
        items = [[i.item_id, i.stock, i.per_user_limit, i.weight, i.hold_s] for i in self.items]
        return {
            ENV_GATEWAY_URL: self.gateway_url,
            ENV_SECRET: self.secret,
            ENV_RUN_ID: self.run_id,
            ENV_ITEMS: json.dumps(items),
            ENV_RESULTS: self.results_path,
            ENV_RESULT_WAIT_S: str(self.result_wait_s),
            ENV_ADMIN_TOKEN: self.admin_token,
            ENV_STATS: self.stats_path,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ScenarioParams:
        env = os.environ if environ is None else environ
        missing = [
            name for name in (ENV_GATEWAY_URL, ENV_SECRET, ENV_RUN_ID, ENV_ITEMS) if name not in env
        ]
        if missing:
            raise KeyError(f"{', '.join(missing)} not set: run scenarios with `flashsale loadtest`")
        items = tuple(
            ItemSpec(
                str(item_id),
                int(stock),
                int(limit),
                float(weight),
                None if hold_s is None else int(hold_s),
            )
            for item_id, stock, limit, weight, hold_s in json.loads(env[ENV_ITEMS])
        )
        return cls(
            gateway_url=env[ENV_GATEWAY_URL],
            secret=env[ENV_SECRET],
            run_id=env[ENV_RUN_ID],
            items=items,
            results_path=env.get(ENV_RESULTS, ""),
            result_wait_s=float(env.get(ENV_RESULT_WAIT_S, "10")),
            admin_token=env.get(ENV_ADMIN_TOKEN, ""),
            stats_path=env.get(ENV_STATS, ""),
        )
