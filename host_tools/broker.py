"""A private Mosquitto broker on a free loopback port, for tests, the demo and `simulate`.

Each broker gets its own folder with a config written here, its own persistence file and log;
nothing depends on a system service or a fixed port.

    with Mosquitto(workdir) as broker:
        print(broker.host, broker.port)
        broker.stop(); broker.start()   # restart mid-stream, same port, same persistence
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from host_tools import process, toolchain

# Debian's default max_queued_messages (1000) drops messages for an offline persistent
# session under load; a gateway that is down for a while must find every reading queued.
DEFAULT_CONF = """\
listener {port} 127.0.0.1
allow_anonymous {anonymous}
persistence {persistence}
persistence_location {workdir}/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 20
log_dest file {workdir}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One mosquitto process. `extra_conf` is appended to the generated config."""

    def __init__(self, workdir: str | Path, *, port: int | None = None, extra_conf: str = "",
                 anonymous: bool = True, persistence: bool = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.anonymous = anonymous
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"Mosquitto({self.host}:{self.port}, running={self.running})"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        conf = DEFAULT_CONF.format(
            port=self.port, workdir=self.workdir,
            anonymous="true" if self.anonymous else "false",
            persistence="true" if self.persistence else "false",
        ) + self.extra_conf
        if os.geteuid() == 0:
            # Run as root, mosquitto drops to the `mosquitto` user, which cannot read the
            # private temp folders tests and the demo use: stay the invoking user instead.
            conf += "user root\n"
        self.conf_path.write_text(conf)
        self.proc = subprocess.Popen(
            [toolchain.mosquitto(), "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "mosquitto.stderr", "ab"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: "
                                   f"{(self.workdir / 'mosquitto.stderr').read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the broker (SIGTERM: it saves its persistence file first)."""
        if self.proc is None:
            return
        process.stop(self.proc, timeout)
        self.proc = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
