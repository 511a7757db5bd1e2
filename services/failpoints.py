"""Test-only crash points: exit at a named step as `kill -9` would (design.md)."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

GATEWAY_POINTS = (
    "gateway.after_claim",
    "gateway.after_reserve",
    "gateway.after_produce",
)
CONSUMER_POINTS = (
    "consumer.before_apply",
    "consumer.after_commit",
    "consumer.after_settle",
)
# The outbox relay (in the consumer process): events sent, not yet marked.
RELAY_POINTS = ("relay.after_publish",)
ALL_POINTS = GATEWAY_POINTS + CONSUMER_POINTS + RELAY_POINTS


def failpoint(active: str, name: str) -> None:
    """Die here, without cleanup, when `active` names this point."""
    if active and active == name:
        log.critical("failpoint %s: killing the process", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
