"""A streaming standby of the embedded Postgres, made synchronous: the durability of
a high-availability deployment, where a commit returns only once a second server
has the WAL on its disk (`flashsale bench --durability replicated`).

The standby is cloned from the running primary with `pg_basebackup` and started
on its own port; only then does the primary name it in `synchronous_standby_names`,
since every commit waits for a named standby from that moment on.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

from infra.embedded.postgres import PG_CTL_TIMEOUT_S, SERVICE_USER, EmbeddedPostgres
from services.errors import ServiceStartError

STANDBY_NAME = "flashsale_standby"
SYNC_WAIT_S = 30.0
SYNC_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class ReplicationState:
    """One row of the primary's pg_stat_replication for the standby."""

    state: str  # "streaming" once caught up
    sync_state: str  # "sync" once commits wait for it


@dataclass
class EmbeddedStandby(EmbeddedPostgres):
    """A hot standby streaming from `primary`; start it after the primary."""

    primary: EmbeddedPostgres | None = None
    name: str = STANDBY_NAME
    extra_options: list[str] = field(default_factory=lambda: ["-c hot_standby=on"])

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        primary = self._primary()
        self._own(self.root)
        conninfo = (
            f"host=127.0.0.1 port={primary.port} user={SERVICE_USER} application_name={self.name}"
        )
        # -c fast: a spread checkpoint would keep it waiting for minutes.
        # -R writes standby.signal and a primary_conninfo built from this connection,
        # application_name included: the name the primary waits for.
        self._run(
            "pg_basebackup",
            "-d",
            conninfo,
            "-D",
            str(self.data_dir),
            "-X",
            "stream",
            "-R",
            "-c",
            "fast",
        )

    def _primary(self) -> EmbeddedPostgres:
        if self.primary is None or not self.primary.port:
            raise ServiceStartError("the standby needs a running primary to clone")
        return self.primary

    def make_synchronous(self, timeout_s: float = SYNC_WAIT_S) -> ReplicationState:
        """Name this standby on the primary and wait until commits wait for it."""
        primary = self._primary()
        _psql(primary, f"ALTER SYSTEM SET synchronous_standby_names = '\"{self.name}\"'")
        _psql(primary, "SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.replication()
            if found is not None and found.state == "streaming" and found.sync_state == "sync":
                return found
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"standby {self.name} not streaming synchronously within {timeout_s:.0f}s"
                    f" (primary sees {found}); see {self.log_path}"
                )
            time.sleep(SYNC_POLL_S)

    def replication(self) -> ReplicationState | None:
        """What the primary's pg_stat_replication says of this standby (None: absent)."""
        row = _psql(
            self._primary(),
            "SELECT state, sync_state FROM pg_stat_replication"
            f" WHERE application_name = '{self.name}'",
        )
        if not row:
            return None
        state, sync_state = row.split("|", 1)
        return ReplicationState(state, sync_state)


def _psql(server: EmbeddedPostgres, sql: str) -> str:
    psql = server.bin_dir / "psql"
    result = subprocess.run(
        [str(psql) if psql.exists() else "psql", server.admin_url, "-tAc", sql],
        capture_output=True,
        text=True,
        check=False,
        timeout=PG_CTL_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise ServiceStartError(f"psql on port {server.port} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def setting(server: EmbeddedPostgres, name: str) -> str:
    """A server's setting as it runs (`SHOW`), to check what a level started."""
    return _psql(server, f"SHOW {name}")
