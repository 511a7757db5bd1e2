"""`flashsale demo` as `make demo` runs it, smaller: every step of the story happens."""

from __future__ import annotations

import os
import re
import subprocess
import sys

FLASHSALE = [sys.executable, "-m", "infra.cli"]
BUYERS = 300
STOCK = 30


def test_the_demo_tells_the_whole_lifecycle_and_its_check_passes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["FLASHSALE_PARTITIONS"] = "4"
    env["COLUMNS"] = "200"  # one line per printed line: rich wraps at the console width
    result = subprocess.run(
        [*FLASHSALE, "demo", "--buyers", str(BUYERS), "--stock", str(STOCK), "--consumers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    # The window: every early buyer told to come back at the start.
    assert out.count("an early buyer: 409 not_started, Retry-After:") == 3, out
    assert "the sale is open" in out
    # The sell-out, then units back by cancellation and by expiry.
    assert re.search(rf"final confirmed\s*│\s*{STOCK}\s", out), out
    assert "10 x 200 cancelled" in out and "sku-demo: 10 units back on sale" in out
    expired = re.search(r"(\d+) holds expired after", out)
    assert expired and int(expired.group(1)) > 0, out
    assert "a payment after pay_by: 1 x 409 expired" in out
    # Sold again, to the last unit, and the check over all of it.
    assert len(re.findall(r"confirmed, 0 left", out)) == 2, out
    assert "invariants hold" in out and "VIOLATION" not in out
    assert "stack stopped; nothing left running" in out
