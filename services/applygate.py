"""Shared or exclusive access to "what this process commits for its partitions".

A consumer applies its partitions' batches side by side, each batch with what
follows its commit (settling its reservation records, putting cancelled units
back on sale): those hold the gate shared. The reconciler running in the same
process reads an item's filter and Postgres and repairs the drift holding it
exclusively, so no batch of an item it owns can commit, or half-settle, between
its Redis read and its Postgres read (services.reconciler says why that makes
the drift it reads exact).

Waiting exclusive access goes first: batches arrive without pause under a
crowd, and a reader that waited for a quiet moment would never get one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class ApplyGate:
    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._applying = 0
        self._exclusive_waiting = 0
        self._exclusive = False
        # Seconds held exclusively in all: what the reads cost the batches.
        self.exclusive_s = 0.0

    @contextlib.asynccontextmanager
    async def applying(self) -> AsyncIterator[None]:
        """One batch (or expiry sweep) from before its commit to after its settle."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: not self._exclusive and not self._exclusive_waiting
            )
            self._applying += 1
        try:
            yield
        finally:
            async with self._changed:
                self._applying -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """No batch of this process is between its commit and its settle meanwhile."""
        async with self._changed:
            self._exclusive_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._exclusive and not self._applying)
            finally:
                self._exclusive_waiting -= 1
                self._changed.notify_all()  # a cancelled wait must not hold batches back
            self._exclusive = True
        started = time.perf_counter()
        try:
            yield
        finally:
            self.exclusive_s += time.perf_counter() - started
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()
