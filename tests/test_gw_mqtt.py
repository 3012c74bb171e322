"""The gateway end to end: `meterlink gateway` as a process, a real Mosquitto, a paho publisher.

Every wait polls with a deadline; nothing sleeps for a fixed time.
"""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.sinks import record_id
from gateway_support import wait_for as _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

METERLINK = str(Path(sys.executable).with_name("meterlink"))
VECTORS = Path(__file__).parent / "vectors"
DEADLINE = 10.0


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    return _wait_for(predicate, timeout, what)


def vector(name: str, invalid: bool = False) -> dict:
    folder = VECTORS / "invalid" if invalid else VECTORS
    return json.loads((folder / f"{name}.json").read_text())


class GatewayProcess:
    """`meterlink gateway --config FILE` in the background, with its stats and sink files."""

    def __init__(self, workdir: Path, broker) -> None:
        self.workdir = workdir
        self.sink = workdir / "readings.jsonl"
        self.stats_file = workdir / "stats.json"
        self.log = workdir / "gateway.log"
        self.config = workdir / "gateway.toml"
        self.config.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'client_id = "gw-test"\n{broker.gateway_conf()}'
            f'[sink]\npath = "{self.sink.name}"\n'
            f'[gateway]\nstats_file = "{self.stats_file.name}"\nlog_level = "DEBUG"\n'
            f'[api]\nport = 0\n')
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        self.stats_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([METERLINK, "gateway", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        wait_for("the gateway to subscribe", lambda: self.stats().get("subscribed")
                 or self._check_alive())
        return self

    def _check_alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}:\n"
                                 f"{self.log.read_text()[-3000:]}")
        return False

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_stats(self, what: str, predicate: Callable[[dict], bool]) -> dict:
        def check():
            self._check_alive()
            snap = self.stats()
            return snap if snap and predicate(snap) else None
        try:
            return wait_for(what, check)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last stats: {self.stats()}") from None

    def lines(self) -> list[dict]:
        if not self.sink.exists():
            return []
        return [json.loads(line) for line in self.sink.read_text().splitlines()]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=DEADLINE)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def gateway(tmp_path, broker):
    gw = GatewayProcess(tmp_path, broker)
    yield gw
    gw.kill()


@pytest.fixture
def publisher(broker):
    client = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher",
                                       protocol=mqtt.MQTTv311))
    client.connect(broker.host, broker.port)
    client.loop_start()

    def publish(topic: str, payload: bytes) -> None:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=DEADLINE)
        assert info.is_published(), f"PUBACK for {topic} not received"

    yield publish
    client.disconnect()
    client.loop_stop()


def expected_lines(name: str, node: str) -> list[dict]:
    v = vector(name)
    seqs = [v["input"]["seq"] + i for i, rec in enumerate(v["input"]["records"])
            for _ in rec["values"]]
    out = []
    for r, seq in zip(v["senml"], seqs):
        name = r["n"].replace(f"{v['node_id']}:", f"{node}:", 1)
        line = dict(r, n=name, node=node, seq=seq, rid=record_id(node, seq, name))
        if line.get("u") == "dBm":  # the feeds send primary units: dBW = dBm - 30
            line.update(u="dBW", v=line["v"] - 30)
        out.append(line)
    return out


def without_t(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "t"} for line in lines]


def test_valid_vectors_are_stored_once_even_across_a_restart(gateway, publisher):
    gateway.start()
    names = sorted(p.stem for p in VECTORS.glob("*.json"))
    before = time.time()
    for name in names:  # each vector from its own node, so their seqs never collide
        publisher(f"m/{name}/r", bytes.fromhex(vector(name)["hex"]))
    want = [line for name in names for line in expected_lines(name, name)]
    wait_for("every vector in the sink", lambda: len(gateway.lines()) >= len(want))
    after = time.time()
    got = gateway.lines()
    assert without_t(got) == without_t(want)
    for g, w in zip(got, want):
        if g["node"] == "relative-time":  # anchored at the gateway's receipt time
            age = vector("relative-time")["input"]["age"]
            assert int(before) - age <= g["t"] <= int(after) - age, g
        else:
            assert g == w
    snap = gateway.wait_stats("all counted", lambda s: s["accepted_messages"] == len(names))
    records = sum(len(vector(n)["input"]["records"]) for n in names)
    assert snap["accepted_records"] == records and snap["senml_records"] == len(want)

    # a redelivered message (same node, same seq) is dropped, not written again
    publisher("m/bme280/r", bytes.fromhex(vector("bme280")["hex"]))
    snap = gateway.wait_stats("the duplicate", lambda s: s["received"] == len(names) + 1)
    assert snap["duplicates"] == 1 and snap["accepted_records"] == records
    assert len(gateway.lines()) == len(want)

    # stop cleanly; a reading published meanwhile waits in the persistent session
    assert gateway.stop() == 0
    final = gateway.stats()
    assert final["running"] is False and final["received"] == len(names) + 1
    publisher("m/while-down/r", bytes.fromhex(vector("temperature-only")["hex"]))

    gateway.start()
    wait_for("the queued reading", lambda: any(x["node"] == "while-down"
                                               for x in gateway.lines()))
    publisher("m/bme280/r", bytes.fromhex(vector("bme280")["hex"]))
    snap = gateway.wait_stats("the duplicate after restart", lambda s: s["received"] == 2)
    assert snap["duplicates"] == 1 and snap["accepted_records"] == 1
    assert without_t(gateway.lines()) == without_t(
        want + expected_lines("temperature-only", "while-down"))
    assert gateway.stop() == 0


def test_malformed_messages_are_counted_and_the_gateway_carries_on(gateway, publisher):
    gateway.start()
    bad = {"version-2": "version", "float-value": "type", "trailing-byte": "trailing",
           "empty": "empty", "too-large": "too_large", "unknown-channel-40": "unknown_channel",
           "truncated-map": "cbor", "65-records": "too_many_records"}
    for name in bad:
        publisher("m/node-01/r", bytes.fromhex(vector(name, invalid=True)["hex"]))
    good = bytes.fromhex(vector("bme280")["hex"])
    publisher("m/UPPER/r", good)
    publisher("m/-dash/r", good)
    want_reasons: dict[str, int] = {"topic": 2}
    for reason in bad.values():
        want_reasons[reason] = want_reasons.get(reason, 0) + 1
    snap = gateway.wait_stats("every reject", lambda s: s["rejected"] == len(bad) + 2)
    assert snap["rejected_by_reason"] == want_reasons
    assert snap["accepted_messages"] == 0 and gateway.lines() == []

    publisher("m/node-01/r", good)
    wait_for("the good message after the bad ones", lambda: len(gateway.lines()) == 3)
    snap = gateway.wait_stats("the accept", lambda s: s["accepted_messages"] == 1)
    assert snap["received"] == snap["rejected"] + snap["accepted_messages"]

    log = gateway.log.read_text()
    rejects = [line for line in log.splitlines() if "event=rejected" in line]
    assert len(rejects) == len(bad) + 2
    assert any("reason=version" in line and "offset=1" in line and "node=node-01" in line
               for line in rejects)
    assert "Traceback" not in log
    assert gateway.stop() == 0


def test_gateway_reconnects_after_the_broker_restarts(gateway, publisher, broker):
    gateway.start()
    broker.stop()
    gateway.wait_stats("the disconnect", lambda s: not s["connected"])
    broker.start()
    gateway.wait_stats("the reconnect", lambda s: s["connects"] >= 2 and s["subscribed"])
    publisher("m/node-01/r", bytes.fromhex(vector("bme280")["hex"]))
    wait_for("the message after the reconnect", lambda: len(gateway.lines()) == 3)
    assert gateway.stop() == 0


def test_outbox_failure_leaves_the_message_with_the_broker(tmp_path, broker, publisher):
    """A message whose commit fails is not acknowledged: the gateway stops with status 1 and
    the broker delivers the message again to the next gateway process."""
    config = parse_config({"mqtt": {"host": broker.host, "port": broker.port,
                                    "client_id": "gw-sink", "ca_file": str(broker.tls.ca_crt)},
                           "sink": {"path": "r.jsonl"}, "api": {"enabled": False}},
                          base_dir=tmp_path)
    first = Gateway(config)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(first.run()))
    thread.start()
    try:
        wait_for("the first gateway to subscribe", lambda: first.stats.snapshot()["subscribed"])
        first.box.db.execute("PRAGMA query_only=1")  # from now on every commit fails
        publisher("m/node-01/r", bytes.fromhex(vector("bme280")["hex"]))
        wait_for("the first gateway to stop", lambda: status)
    finally:
        first.stop()
        thread.join(DEADLINE)
    assert status == [1]
    assert not (tmp_path / "r.jsonl").exists()

    second = Gateway(config)
    thread = threading.Thread(target=second.run)
    thread.start()
    try:
        wait_for("the redelivered message", lambda: (tmp_path / "r.jsonl").exists() and
                 (tmp_path / "r.jsonl").read_text().count("\n") == 3)
        wait_for("the accept", lambda: second.stats.snapshot()["accepted_records"] == 1)
    finally:
        second.stop()
        thread.join(DEADLINE)


@pytest.mark.parametrize("text, words", [
    ('[mqtt]\nport = "abc"\n[sink]\npath = "r.jsonl"\n',
     'mqtt.port must be an integer 1-65535: got "abc"'),
    ('[mqtt]\nhots = "x"\n[sink]\npath = "r.jsonl"\n', "mqtt.hots is not a known key"),
    ("[mqtt]\n", "sinks must configure at least one sink"),
    ('[sinks.http]\ngzip = true\n', "sinks.http.url is required"),
    ('[sinks.http]\nurl = "ftp://x"\n', 'sinks.http.url must be an http:// or https:// URL'),
    ('[sink]\npath = "r.jsonl"\n[outbox]\nmax_bytes = "big"\n',
     'outbox.max_bytes must be an integer'),
    ("[mqtt\n", "is not valid TOML"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, text, words):
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    proc = subprocess.run([METERLINK, "gateway", "--config", str(config)], capture_output=True,
                          text=True, timeout=DEADLINE)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"meterlink: gateway: {config}: "), proc.stderr
    assert words in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_missing_config_exits_2(tmp_path):
    proc = subprocess.run([METERLINK, "gateway", "--config", str(tmp_path / "none.toml")],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 2 and "cannot read config file" in proc.stderr
