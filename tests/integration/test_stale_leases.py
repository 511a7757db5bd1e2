"""Lease rows of partitions the topic no longer has do not hold up readiness."""

from __future__ import annotations

import asyncio

from infra.stack import wait_for_consumers
from services.resources import CoreResources
from services.settings import Settings
from services.store.leases import acquire_lease, ensure_leases
from services.topics import ensure_topic
from tests.conftest import fresh_id


async def test_rows_beyond_the_topics_partitions_are_ignored(
    settings: Settings, core: CoreResources
) -> None:
    """The broker re-created the topic with 2 partitions; rows 2-3 still name a
    consumer that is gone. Waiting for the live consumer must not wait for them."""
    topic = fresh_id("shrunk")
    await ensure_topic(settings.kafka_bootstrap, topic, 2)
    await ensure_leases(core.pool, topic, 4)
    for partition, owner in ((0, "alive"), (1, "alive"), (2, "gone"), (3, "gone")):
        await acquire_lease(core.pool, topic, partition, owner)
    stack_settings = settings.replace(topic=topic, partitions=4)
    await asyncio.to_thread(wait_for_consumers, stack_settings, ["alive"], 20.0)
