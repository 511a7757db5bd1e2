"""Typed errors. Callers branch on a class or a flag, never on message text."""

from __future__ import annotations


class FlashsaleError(Exception):
    """Base of every error this project raises on purpose."""


class SettingsError(FlashsaleError):
    """A FLASHSALE_* setting is missing or malformed."""


class ServiceStartError(FlashsaleError):
    """An embedded service (Postgres, Redis, broker) did not start."""


class UnavailableError(FlashsaleError):
    """A backing service (Redis, Kafka, Postgres) cannot be reached now: retry later."""


class ProduceUncertainError(UnavailableError):
    """A produce failed after the message entered the producer's batch: the broker may
    have appended it (a timeout, a lost connection, an error after the request was
    sent), so the message can still be consumed. `partition` is where it went."""

    def __init__(self, message: str, partition: int) -> None:
        super().__init__(message)
        self.partition = partition


class FencedError(FlashsaleError):
    """A consumer's lease epoch is stale: another consumer owns the partition."""


class ItemNotFoundError(FlashsaleError):
    """No item with this id."""


class StockBelowSoldError(FlashsaleError):
    """Stock cannot go below the units already sold."""


class StackRunningError(FlashsaleError):
    """An embedded stack is already running from this state folder."""


class StackNotRunningError(FlashsaleError):
    """No embedded stack runs from this state folder."""
