"""The reconciler's info line stays short however many filters a pass rebuilt."""

from __future__ import annotations

from services.reconciler import REBUILT_IDS_SHOWN, ReconcileReport


def test_summary_counts_rebuilt_items_and_names_only_a_few() -> None:
    ids = [f"sku-{n}" for n in range(1000)]
    report = ReconcileReport(settled=2, rebuilt=list(ids), visited=500)
    line = report.summary()
    assert "rebuilt 1000 filter(s)" in line and "settled 2" in line
    assert f"and {1000 - REBUILT_IDS_SHOWN} more" in line
    assert "sku-999" not in line and len(line) < 200
    assert report.rebuilt_ids().split() == ids


def test_summary_without_rebuilt_items_names_none() -> None:
    line = ReconcileReport(republished=1).summary()
    assert "rebuilt 0 filter(s)," in line and "more" not in line
