"""`pgbench_row`: Postgres' own hot-row ceiling, with no HTTP and no Python at all.

The conditional UPDATE that postgres_row runs per purchase, driven by `pgbench`
(it ships beside `postgres`) at several client counts against the stack's own
Postgres, so at the run's durability. Its best rate is what any design that
sells through one row per commit can reach on this machine (issue 20): a design
that only beats a badly tuned baseline has not beaten anything.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from loadtests.bench.errors import BenchError

CLIENT_COUNTS = (1, 8, 32, 64)
MAX_SECONDS = 8.0
MIN_SECONDS = 2.0
# Seconds of pgbench per client count: a small bench (the tests') runs shorter.
REQUESTS_PER_SECOND_OF_RUN = 5000
THREADS = 2  # the machine's cores: pgbench's own client threads
TIMEOUT_MARGIN_S = 30.0
ITEM_STOCK = 2_000_000_000
SETUP = """
DROP TABLE IF EXISTS pgbench_row_item;
CREATE TABLE pgbench_row_item (
    item_id int PRIMARY KEY, stock int NOT NULL, sold int NOT NULL CHECK (sold <= stock)
);
INSERT INTO pgbench_row_item VALUES (1, {stock}, 0);
"""
SCRIPT = "UPDATE pgbench_row_item SET sold = sold + 1 WHERE item_id = 1 AND sold < stock;\n"
TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


@dataclass(frozen=True, slots=True)
class PgbenchFigures:
    seconds: float
    tps_by_clients: dict[int, float] = field(default_factory=dict)

    @property
    def best_clients(self) -> int | None:
        if not self.tps_by_clients:
            return None
        return max(self.tps_by_clients, key=lambda clients: self.tps_by_clients[clients])

    @property
    def best_tps(self) -> float | None:
        best = self.best_clients
        return None if best is None else self.tps_by_clients[best]


def run_seconds(requests: int) -> float:
    return max(MIN_SECONDS, min(MAX_SECONDS, requests / REQUESTS_PER_SECOND_OF_RUN))


async def pgbench_row(
    pgbench: Path, database_url: str, seconds: float, log_path: Path
) -> PgbenchFigures:
    """The row's UPDATE at every client count, each on a fresh row."""
    figures = PgbenchFigures(seconds)
    with tempfile.TemporaryDirectory(prefix="pgbench-row-") as folder:
        script = Path(folder) / "row.sql"
        script.write_text(SCRIPT)
        for clients in CLIENT_COUNTS:
            await _fresh_row(database_url)
            figures.tps_by_clients[clients] = await _run(
                pgbench, database_url, script, clients, seconds, log_path
            )
    return figures


async def _fresh_row(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(SETUP.format(stock=ITEM_STOCK))
    finally:
        await conn.close()


async def _run(
    pgbench: Path, database_url: str, script: Path, clients: int, seconds: float, log_path: Path
) -> float:
    args = [
        str(pgbench),
        "--no-vacuum",  # its own tables are not used
        f"--file={script}",
        f"--client={clients}",
        f"--jobs={min(clients, THREADS)}",
        f"--time={max(1, round(seconds))}",
        "--protocol=prepared",
        database_url,
    ]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(seconds + TIMEOUT_MARGIN_S):
            out, err = await process.communicate()
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise BenchError(f"pgbench with {clients} clients did not finish") from exc
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(args[:-1])} <url>\n{out.decode()}{err.decode()}\n")
    found = TPS.search(out.decode())
    if process.returncode != 0 or found is None:
        raise BenchError(
            f"pgbench with {clients} clients failed ({process.returncode}):"
            f" {err.decode().strip()[-500:]}"
        )
    return float(found.group(1))
