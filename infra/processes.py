"""Gateway and consumer processes of the embedded stack."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from infra.embedded.proc import log_tail, spawn, wait_until
from services.errors import ServiceStartError
from services.settings import Settings

READY_TIMEOUT_S = 60.0


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings.as_env())
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_gateway(
    settings: Settings,
    log_dir: Path,
    index: int = 0,
    on_spawn: Callable[[int], None] | None = None,
) -> int:
    """Start a gateway and wait until it is ready; `on_spawn` learns its pid before
    the wait, so a caller interrupted meanwhile can still stop it."""
    log = log_dir / f"gateway-{index}.log"
    process = spawn([sys.executable, "-m", "gateway"], log, child_env(settings))
    if on_spawn is not None:
        on_spawn(process.pid)
    url = f"http://{settings.gateway_host}:{settings.gateway_port}/readyz"
    wait_until(
        lambda: _http_ok(url),
        f"gateway on port {settings.gateway_port}",
        log,
        timeout_s=READY_TIMEOUT_S,
        alive=lambda: process.poll() is None,
    )
    return process.pid


def start_consumer(settings: Settings, log_dir: Path, name: str, prefix: Sequence[str] = ()) -> int:
    """`prefix` runs it elsewhere (`ip netns exec NS`), as the same pid."""
    log = log_dir / f"{name}.log"
    process = spawn(
        [*prefix, sys.executable, "-m", "consumers"],
        log,
        child_env(settings, FLASHSALE_CONSUMER_NAME=name),
    )
    if process.poll() is not None:
        raise ServiceStartError(f"consumer {name} exited at once:\n{log_tail(log)}")
    return process.pid


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
