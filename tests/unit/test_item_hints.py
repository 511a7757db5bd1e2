"""The negative cache of item ids (gateway/hints.py)."""

from __future__ import annotations

import time

from gateway.hints import ItemHints


def test_an_unknown_id_is_remembered_until_the_item_is_written() -> None:
    hints = ItemHints(item_ttl_s=60.0, sold_out_ttl_s=0.5)
    hints.remember_missing("sku-1", time.monotonic())
    assert hints.is_missing("sku-1")
    hints.forget("sku-1")  # an admin wrote it
    assert not hints.is_missing("sku-1")


def test_a_read_that_began_before_the_write_remembers_nothing() -> None:
    """It found no row, but the item was written (and its hints forgotten) while
    it ran: caching its "absent" would answer 404 for a real item."""
    hints = ItemHints(item_ttl_s=60.0, sold_out_ttl_s=0.5)
    read_at = time.monotonic()
    hints.forget("sku-2")
    hints.remember_missing("sku-2", read_at)
    assert not hints.is_missing("sku-2")
    hints.remember_missing("sku-2", time.monotonic() + 1.0)  # a read begun after the write
    assert hints.is_missing("sku-2")
