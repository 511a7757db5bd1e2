"""The Postgres durability levels of `flashsale bench --durability`."""

from __future__ import annotations

# How durable a commit is, the same for every system of a run (issue 20):
# fsync: Postgres' defaults (fsync, full_page_writes, synchronous_commit on);
# replicated: also on a synchronous streaming standby's disk (a high-availability
# deployment); off: no fsync, no full-page writes, a labelled quick mode.
FSYNC = "fsync"
REPLICATED = "replicated"
DURABILITY_OFF = "off"
DURABILITY_LEVELS = (FSYNC, REPLICATED, DURABILITY_OFF)


def durability_settings(level: str) -> dict[str, bool]:
    """The stack's Postgres settings for a durability level."""
    return {"postgres_fsync": level != DURABILITY_OFF, "postgres_standby": level == REPLICATED}
