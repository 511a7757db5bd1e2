"""`flashsale events tail`: print purchase events as they come, one JSON object a line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import click

from infra.cli_options import state_dir_option
from infra.stackfile import StackFile
from services.eventlog import EventReader
from services.settings import Settings

POLL_S = 1.0


@click.group()
def events() -> None:
    """The purchase-events topic: every status change of every purchase."""


@events.command("tail")
@click.option("--from-beginning", is_flag=True, help="Print the topic's events from its start.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after this many events.")
@click.option("--item", "item_id", default=None, help="Only the events of this item.")
@state_dir_option()
def tail(from_beginning: bool, count: int | None, item_id: str | None, state_dir: Path) -> None:
    """Print events as they come (FLASHSALE_EVENTS_TOPIC, default purchase-events).

    The broker is the running stack's, or FLASHSALE_KAFKA_BOOTSTRAP when set.

    A relay may send an event twice after a crash, with the same event_id.
    """
    settings = Settings.from_env()
    bootstrap = settings.kafka_bootstrap or StackFile.load(state_dir).kafka_bootstrap
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a tail ends
        asyncio.run(_tail(bootstrap, settings.events_topic, from_beginning, count, item_id))


async def _tail(
    bootstrap: str, topic: str, from_beginning: bool, count: int | None, item_id: str | None
) -> None:
    printed = 0
    async with EventReader(bootstrap, topic, from_beginning) as reader:
        while count is None or printed < count:
            for event in await reader.read(POLL_S):
                if item_id is not None and event.get("item_id") != item_id:
                    continue
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
                sys.stdout.flush()
                printed += 1
                if count is not None and printed >= count:
                    return
