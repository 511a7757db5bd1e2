"""Did the broker lose a partition's log? (design.md, "A log that went backwards")

The lease row stores the next offset and the purchase id of the last record
applied. The log is the one we applied from only if it still reaches that
offset and the record just before it is the same purchase. A broker that lost
its log (Tansu on memory storage, a recreated topic) fails one of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.schema import MessageError, PurchaseMessage

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0


async def records_at(
    bootstrap: str, wanted: dict[TopicPartition, int]
) -> dict[TopicPartition, str | None]:
    """The purchase id at each wanted offset (None: no such record or undecodable).

    Partitions not answered within the time limit are left out: unknown.
    """
    found: dict[TopicPartition, str | None] = {}
    if not wanted:
        return found
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await reader.start()
        reader.assign(list(wanted))
        for tp, offset in wanted.items():
            reader.seek(tp, offset)
        async with asyncio.timeout(VERIFY_TIMEOUT_S):
            while len(found) < len(wanted):
                batches = await reader.getmany(timeout_ms=200, max_records=len(wanted))
                for tp, records in batches.items():
                    if tp in found or not records:
                        continue
                    first = records[0]
                    found[tp] = _purchase_id(first.value) if first.offset == wanted[tp] else None
                    reader.pause(tp)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("log check incomplete (%d of %d): %r", len(found), len(wanted), exc)
    finally:
        with contextlib.suppress(KafkaError):
            await reader.stop()
    return found


def _purchase_id(raw: bytes | None) -> str | None:
    try:
        return PurchaseMessage.decode(raw or b"").purchase_id
    except MessageError:
        return None
