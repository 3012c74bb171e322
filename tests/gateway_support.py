"""The real gateway as a child process, for tests of the whole reading path.

    gw = GatewayProcess(tmp_path / "gw", broker)   # writes its config, starts `meterlink gateway`
    gw.records()          # SenML records delivered to the file sink so far (dicts with node, seq)
    gw.readings()         # {(node, seq), ...} of those records
    gw.kill(); gw.start() # SIGKILL and restart on the same state
    gw.stop()

Tests of node and gateway faults use this one class, so a change to the gateway's config or
sink layout is made here once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from host_tools.process import stop

MELINK = str(Path(sys.executable).with_name("meterlink"))


class GatewayProcess:
    def __init__(self, workdir: Path, broker, client_id: str = "gw-test", start: bool = True):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sink = self.dir / "readings.jsonl"
        self.stats = self.dir / "stats.json"
        self.conf = self.dir / "gateway.toml"
        self.conf.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "{client_id}"\n'
            f'[sinks.file]\npath = "{self.sink}"\n[gateway]\nstats_file = "{self.stats}"\n'
            f'[api]\nport = 0\n')
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self) -> None:
        log = open(self.dir / "gateway.log", "ab")
        self.proc = subprocess.Popen([MELINK, "gateway", "--config", str(self.conf)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, 10)

    def log(self) -> str:
        p = self.dir / "gateway.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def counters(self) -> dict:
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}

    def records(self) -> list[dict]:
        if not self.sink.exists():
            return []
        out = []
        for line in self.sink.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    break  # a line being written right now
        return out

    def readings(self) -> set[tuple[str, int]]:
        return {(r["node"], r["seq"]) for r in self.records()}

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
