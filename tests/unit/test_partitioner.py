"""The producer's remembering partitioner picks what aiokafka's default one picks."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from services.producer import PARTITIONS_REMEMBERED, RememberingPartitioner


def test_remembered_partitions_are_the_default_partitioners() -> None:
    default, remembering = DefaultPartitioner(), RememberingPartitioner()
    for count in (1, 3, 12, 64):
        partitions = list(range(count))
        for n in range(PARTITIONS_REMEMBERED // 4 + 50):  # past the bound: cleared, still right
            key = f"item-{n}".encode()
            expected = default(key, partitions, partitions)
            assert remembering(key, partitions, partitions) == expected
            assert remembering(key, partitions, partitions) == expected  # from memory


def test_unkeyed_records_go_to_an_available_partition() -> None:
    assert RememberingPartitioner()(None, [0, 1, 2], [2]) == 2
