"""Reading the purchase-events topic (operators' `flashsale events tail`, tests, checks)."""

from __future__ import annotations

import json
from types import TracebackType

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from services.errors import UnavailableError

READ_TIMEOUT_MS = 10_000


class EventReader:
    """Every partition of the events topic, without a consumer group (nothing is
    committed, several readers never share the events): from the start, or only
    what arrives from now on."""

    def __init__(self, bootstrap: str, topic: str, from_beginning: bool) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            request_timeout_ms=READ_TIMEOUT_MS,
        )

    async def __aenter__(self) -> EventReader:
        try:
            await self._consumer.start()
            self._consumer.subscribe([self.topic])
        except (KafkaError, OSError) as exc:
            await self._consumer.stop()
            raise UnavailableError(f"kafka unavailable: {exc!r}") from exc
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def read(self, timeout_s: float) -> list[dict[str, object]]:
        """The events that arrived, waiting up to `timeout_s` for the first; in
        order within each partition (so within each item)."""
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
        except (KafkaError, OSError) as exc:
            raise UnavailableError(f"reading {self.topic}: {exc!r}") from exc
        events: list[dict[str, object]] = []
        for records in batches.values():
            for record in records:
                if record.value is not None:
                    events.append(json.loads(record.value))
        return events
