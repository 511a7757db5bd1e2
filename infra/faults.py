"""Fault injection on an embedded stack: the faults of design.md, one function each.

Each call blocks until the fault is in place (and, for restarts, healed); async
callers run them in a thread.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from infra.embedded.proc import kill_pid, pid_alive
from infra.stack import EmbeddedStack

log = logging.getLogger(__name__)

FAULTS = ("kill_consumer", "pause_consumer", "restart_broker", "restart_redis", "restart_postgres")


@dataclass
class FaultInjector:
    stack: EmbeddedStack

    def consumer_names(self) -> list[str]:
        return [name for name, pid in self.stack.consumer_pids.items() if pid_alive(pid)]

    def kill_consumer(self, name: str, replace: bool = True) -> str | None:
        """kill -9 one consumer (mid-batch, if traffic flows); start a fresh one."""
        pid = self.stack.consumer_pids.pop(name)
        kill_pid(pid)
        log.info("killed consumer %s (pid %d)", name, pid)
        if not replace:
            return None
        fresh = f"{name.split('-r', maxsplit=1)[0]}-r{time.monotonic_ns() % 100000}"
        self.stack.add_consumer(fresh)
        return fresh

    def pause_consumer(self, name: str, seconds: float) -> None:
        """SIGSTOP past the session timeout (the GC pause of the lock articles), then SIGCONT."""
        pid = self.stack.consumer_pids[name]
        os.kill(pid, signal.SIGSTOP)
        log.info("paused consumer %s (pid %d) for %.1fs", name, pid, seconds)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def restart_broker(self) -> None:
        """Memory storage: every topic, message, group and offset is gone."""
        self.stack.broker.restart()

    def restart_redis(self) -> None:
        """Kill -9 and start empty on the same port(s)."""
        self.stack.redis.restart()

    def restart_postgres(self, down_s: float = 2.0) -> None:
        self.stack.postgres.stop("immediate")
        time.sleep(down_s)
        self.stack.postgres.start()
