"""Test-only crash points: exit at a named step as `kill -9` would (design.md).

Error points (`error:NAME[,NAME...]`) make a step fail as a service error would,
without killing the process: a produce that reached the broker but whose ack
the gateway never sees, a give-back whose Redis call fails.
"""

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
# Steps of an admission that can be made to fail instead of dying: the produce
# fails before anything was sent (a certain failure); the message is in the
# broker but the gateway sees an uncertain produce error (its ack was lost: the
# consumer may apply it before the gateway handles the error); the gateway sees
# an uncertain error and the message reaches the broker only after the gateway
# handled it (a send the producer retried after the gateway's timeout); the
# give-back of a reservation fails as a Redis error would; writing the
# purchase's rejected row fails as a Postgres error would.
PRODUCE_FAILS = "gateway.produce_fails"
PRODUCE_LOST_ACK = "gateway.produce_lost_ack"
PRODUCE_DELIVERED_LATE = "gateway.produce_delivered_late"
GIVEBACK_FAILS = "gateway.giveback_fails"
FENCE_FAILS = "gateway.fence_fails"
ERROR_POINTS = (
    PRODUCE_FAILS,
    PRODUCE_LOST_ACK,
    PRODUCE_DELIVERED_LATE,
    GIVEBACK_FAILS,
    FENCE_FAILS,
)
ERROR_PREFIX = "error:"


def error_spec(*points: str) -> str:
    """The `failpoint` setting that makes each of `points` fail."""
    return ERROR_PREFIX + ",".join(points)


def failpoint(active: str, name: str) -> None:
    """Die here, without cleanup, when `active` names this point."""
    if active and active == name:
        log.critical("failpoint %s: killing the process", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def fails_here(active: str, name: str) -> bool:
    """Whether `active` makes this error point fail (the caller raises its error)."""
    if not active.startswith(ERROR_PREFIX):
        return False
    failing = name in active[len(ERROR_PREFIX) :].split(",")
    if failing:
        log.warning("failpoint %s: failing this step", name)
    return failing
