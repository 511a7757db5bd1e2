"""The chaos checker's FILTER_DRIFT rule on a real Redis filter and a real Postgres:
quiet on a filter that holds exactly stock - sold, and firing on a phantom unit
planted in one shard, or a unit taken from one (a leak)."""

from __future__ import annotations

import pytest

from loadtests.chaos.checker import check
from loadtests.chaos.history import History
from loadtests.chaos.pgsnapshot import REQUIRED_CONSTRAINTS, ItemRow, Snapshot
from loadtests.checks.filtercheck import settle_filters
from loadtests.sale.target import FilterAccess
from services.resources import CoreResources
from services.stockfilter.keys import stock_key
from services.store.items import upsert_item
from tests.conftest import fresh_id

STOCK = 5
# Long enough for a filter that agrees at once; the planted drift is never
# repaired here (no reconciler runs), so that case is read with no wait at all.
SETTLE_S = 10.0


@pytest.mark.parametrize(("planted", "found"), [(1, "1 units invented"), (-1, "1 units leaked")])
async def test_a_planted_drift_in_a_real_filter_is_named(
    core: CoreResources, planted: int, found: str
) -> None:
    settings = core.settings
    access = FilterAccess(settings.redis_url, settings.redis_cluster, settings.stock_shards)
    item_id = fresh_id()
    await upsert_item(core.pool, item_id, STOCK, 1)
    await core.stock.set_remaining(item_id, STOCK)
    snapshot = Snapshot({item_id: ItemRow(item_id, STOCK, 0, 1)}, [], REQUIRED_CONSTRAINTS)

    clean = await settle_filters(access, settings.database_url, [item_id], SETTLE_S)
    assert check(History(), snapshot, filter_readings=clean).ok

    shard = next(n for n, level in enumerate(await core.stock.shard_levels(item_id)) if level)
    await core.redis.incrby(stock_key(item_id, shard), planted)
    drifted = await settle_filters(access, settings.database_url, [item_id], timeout_s=0)
    report = check(History(), snapshot, filter_readings=drifted)

    assert report.kinds() == {"FILTER_DRIFT"}
    assert item_id in report.violations[0].detail and found in report.violations[0].detail
