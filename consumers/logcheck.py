"""Did the broker lose a partition's log? (design.md, "A log that went backwards")

The lease row stores the next offset and the purchase id of the last record
applied. The log is the one we applied from only if it still reaches that
offset and the record just before it is the same purchase. A broker that lost
its log (Tansu on memory storage, a recreated topic) fails one of the two.

Only evidence starts a new log generation (a replay of the whole log): a
question the broker did not answer proves nothing, so the partition waits and
asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.schema import MessageError, PurchaseMessage

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0


class LogVerdict(enum.Enum):
    SAME = "same"  # continue at the stored offset
    LOST = "lost"  # the log went backwards: start a new generation
    UNKNOWN = "unknown"  # no answer yet: keep the partition paused, ask again


@dataclass(frozen=True, slots=True)
class RecordAt:
    """The first record the log still holds at or after the offset asked for."""

    offset: int
    purchase_id: str | None  # None: not a purchase message


def judge_log(
    next_offset: int,
    last_purchase_id: str | None,
    end_offset: int,
    begin_offset: int,
    answer: RecordAt | None,
) -> LogVerdict:
    """Is the log the one applied up to `next_offset`? `answer`: the record at next_offset - 1."""
    if end_offset < next_offset:
        return LogVerdict.LOST
    last_applied = next_offset - 1
    if last_applied < 0 or last_purchase_id is None:
        return LogVerdict.SAME
    # Retention moved the log start past our last record: the same log, only shorter.
    if begin_offset > last_applied:
        return LogVerdict.SAME
    if answer is None:
        return LogVerdict.UNKNOWN
    if answer.offset != last_applied:
        # Deleted between the two questions: the log start moved, as above.
        return LogVerdict.SAME
    return LogVerdict.SAME if answer.purchase_id == last_purchase_id else LogVerdict.LOST


async def records_at(
    bootstrap: str, wanted: dict[TopicPartition, int]
) -> dict[TopicPartition, RecordAt]:
    """The first record at or after each wanted offset.

    Partitions not answered within the time limit are left out: unknown.
    """
    found: dict[TopicPartition, RecordAt] = {}
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
                    first = next((r for r in records if r.offset >= wanted[tp]), None)
                    if tp in found or first is None:
                        continue
                    found[tp] = RecordAt(first.offset, _purchase_id(first.value))
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
