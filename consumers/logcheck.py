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

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.errors import UnavailableError
from services.schema import MessageError, PurchaseMessage
from services.store.leases import LeaseGrant, start_log_generation

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0
# A log whose end is below our offset is asked for our last record only this long:
# a broker that holds it serves it at once; one that lost it (a restarted
# embedded broker) answers nothing, and recovery should not wait.
SHORT_LOG_TIMEOUT_S = 1.0
OFFSETS_TIMEOUT_S = 5.0
# A log that answers no check at all this many times in a row is read again from
# its start (a new generation): slow on a big log, never wrong (Postgres dedupes),
# and a partition must not stall for good on a broker that never answers (seen on
# the embedded broker after a restart recreated the topic under a live producer).
LOG_CHECK_ATTEMPTS = 3


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
    last_applied = next_offset - 1
    if end_offset < next_offset:
        # Short of what we applied: lost, unless it still holds our last record.
        # The embedded broker's end offset lags the records it holds after
        # concurrent appends (18,000 appended, 17,126 reported, until the next
        # append), and a rebalance then replayed a whole partition for nothing.
        if answer is None or last_purchase_id is None or answer.offset != last_applied:
            return LogVerdict.LOST
        return LogVerdict.SAME if answer.purchase_id == last_purchase_id else LogVerdict.LOST
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
    bootstrap: str, wanted: dict[TopicPartition, int], timeout_s: float = VERIFY_TIMEOUT_S
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
        async with asyncio.timeout(timeout_s):
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


async def log_starts(
    kafka: AIOKafkaConsumer,
    pool: asyncpg.Pool,
    bootstrap: str,
    grants: dict[TopicPartition, LeaseGrant],
    unanswered: dict[TopicPartition, int],
) -> dict[TopicPartition, int | None]:
    """Where to start reading each partition whose log answered (None: fenced).

    Partitions left out stay pending: the broker did not answer the check.
    `unanswered` counts, per partition, the checks in a row that got no answer.
    """
    ends, begins = await _offsets(kafka, list(grants))

    def verdict(tp: TopicPartition, answer: RecordAt | None) -> LogVerdict:
        grant = grants[tp]
        return judge_log(grant.next_offset, grant.last_purchase_id, ends[tp], begins[tp], answer)

    short = {tp for tp in ends if ends[tp] < grants[tp].next_offset and grants[tp].last_purchase_id}
    wanted = {
        tp: grants[tp].next_offset - 1 for tp in ends if verdict(tp, None) is LogVerdict.UNKNOWN
    }
    seen, seen_short = await asyncio.gather(
        records_at(bootstrap, wanted),
        records_at(
            bootstrap, {tp: grants[tp].next_offset - 1 for tp in short}, SHORT_LOG_TIMEOUT_S
        ),
    )
    seen.update(seen_short)
    starts: dict[TopicPartition, int | None] = {}
    for tp in ends:
        judged = verdict(tp, seen.get(tp))
        if judged is LogVerdict.UNKNOWN:
            unanswered[tp] = unanswered.get(tp, 0) + 1
            if unanswered[tp] < LOG_CHECK_ATTEMPTS:
                log.warning("partition %d: the log check got no answer; asking again", tp.partition)
                continue
            log.warning(
                "partition %d: %d log checks got no answer; reading the log from its start",
                tp.partition,
                unanswered[tp],
            )
            judged = LogVerdict.LOST
        unanswered.pop(tp, None)
        grant = grants[tp]
        if judged is LogVerdict.SAME:
            starts[tp] = grant.next_offset
            continue
        log.warning(
            "partition %d: log check failed: applied up to %d (last purchase %s),"
            " broker log %d..%d, record there %r",
            tp.partition,
            grant.next_offset,
            grant.last_purchase_id,
            begins[tp],
            ends[tp],
            seen.get(tp),
        )
        starts[tp] = await _new_generation(pool, tp, grant, begins[tp])
    return starts


async def _offsets(
    kafka: AIOKafkaConsumer, tps: list[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """End and beginning offsets of the partitions that answer, each asked on
    its own: after a broker restart the embedded broker may lack some of them
    (docs/faults.md), and one missing partition must not keep the others from
    being leased. UnavailableError when none answers."""

    async def one(tp: TopicPartition) -> tuple[TopicPartition, int, int] | None:
        try:
            # aiokafka would wait its whole request timeout (40 s) on a broker
            # that restarts: a member then takes no lease for that long.
            async with asyncio.timeout(OFFSETS_TIMEOUT_S):
                ends = await kafka.end_offsets([tp])
                begins = await kafka.beginning_offsets([tp])
        except (TimeoutError, KafkaError, KeyError) as exc:
            # A partition the broker refuses or leaves out of its answer waits
            # for the next round like a silent one; the others are leased now.
            log.debug("partition %d: no offsets: %r", tp.partition, exc)
            return None
        return tp, ends[tp], begins[tp]

    answers = [a for a in await asyncio.gather(*(one(tp) for tp in tps)) if a is not None]
    if not answers:
        raise UnavailableError("the broker did not give the partitions' offsets")
    silent = sorted(tp.partition for tp in tps if tp not in {a[0] for a in answers})
    if silent:
        log.warning("partitions %s: the broker gave no offsets; asking again later", silent)
    return {tp: end for tp, end, _ in answers}, {tp: begin for tp, _, begin in answers}


async def _new_generation(
    pool: asyncpg.Pool, tp: TopicPartition, grant: LeaseGrant, begin: int
) -> int | None:
    """The broker lost this partition's log: read the new one from its start."""
    regrant = await start_log_generation(pool, tp.topic, tp.partition, grant.epoch, begin)
    if regrant is None:
        return None
    log.warning(
        "partition %d: the log is not the one applied up to offset %d; "
        "reading the new log from %d as generation %d",
        tp.partition,
        grant.next_offset,
        begin,
        regrant.log_generation,
    )
    return regrant.next_offset
