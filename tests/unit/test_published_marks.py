"""Which seq each partition's published mark may move to after a relay round."""

from __future__ import annotations

from datetime import UTC, datetime

from services.store.outbox import OutboxEvent, published_marks


def event(seq: int, partition: int) -> OutboxEvent:
    at = datetime(2026, 11, 25, tzinfo=UTC)
    return OutboxEvent(
        seq, f"p{seq}:confirmed", f"p{seq}", "u", "i", 1, "confirmed", None, at, partition
    )


def test_every_event_acknowledged_moves_each_partition_to_its_last() -> None:
    events = [event(1, 0), event(2, 1), event(3, 0), event(5, 1)]
    assert published_marks(events, {1, 2, 3, 5}) == {0: 3, 1: 5}


def test_a_failed_event_stops_its_partition_there_and_no_other() -> None:
    # 4 failed: 6 was acknowledged (another chain), but the mark cannot pass 4.
    events = [event(6, 0), event(1, 0), event(4, 0), event(2, 1), event(7, 1)]
    assert published_marks(events, {1, 6, 2, 7}) == {0: 1, 1: 7}


def test_a_partition_whose_first_event_failed_gets_no_mark() -> None:
    assert published_marks([event(3, 2), event(4, 2)], {4}) == {}
