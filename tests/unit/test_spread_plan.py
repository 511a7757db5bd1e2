"""How the filter's units are added or taken over shards (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.reconciler import spread_plan

levels_strategy = st.dictionaries(st.integers(0, 7), st.integers(0, 50), min_size=1, max_size=8)


@given(levels=levels_strategy, units=st.integers(-300, 300), per_request=st.integers(1, 5))
def test_a_plan_never_leaves_a_shard_below_zero(
    levels: dict[int, int], units: int, per_request: int
) -> None:
    """A debt on one shard is never paid by units given back to another (review of
    issue 9): a shard below zero would make the others sell units that do not exist."""
    plan = spread_plan(levels, units, per_request)
    assert set(plan) <= set(levels)
    assert all(levels[shard] + change >= 0 for shard, change in plan.items())
    added = sum(plan.values())
    if units >= 0:
        assert added == units
    else:
        assert added == -min(-units, sum(levels.values()))


def test_units_go_to_the_emptiest_shards_in_usable_lots() -> None:
    assert spread_plan({0: 5, 1: 0, 2: 3}, 4, per_request=2) == {1: 2, 2: 2}
    assert spread_plan({0: 5, 1: 0, 2: 3}, -6) == {0: -5, 2: -1}
