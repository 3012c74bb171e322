"""Gateway delivery under faults, with a real Mosquitto, the real gateway process, real SQLite
and a real local HTTP server as the platform (tests/gateway_support.py: Upstream).

- SIGKILL at 20 random instants under a steady stream: every record reaches the platform and
  the file sink; a record reaches the platform twice only inside a batch retried under the
  same Idempotency-Key; after the platform's dedup by key, each record counts exactly once.
- The platform answers 503 (Retry-After) and times out, then recovers: nothing lost, the
  backlog drains, Retry-After is honoured, the file sink is not held back, and a 400 lands in
  dead letters with the reply body without blocking what follows.
- Two gateways on one shared subscription: the union is complete and duplicate-free.
- The platform stays down until the outbox is full: the gateway stops taking messages (they
  wait at the broker), raises `outbox_full` and reports not ready; when the platform is back
  and the backlog drained below the limit, it clears the alarm and takes the rest by itself.
"""

import random
import threading
import time
from collections import Counter, defaultdict

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway_support import GatewayProcess, Upstream
from gateway_support import wait_for as _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

T0 = 1763712000


def wait_for(what, predicate, timeout=30.0, diag=lambda: "", poll=0.05):
    return _wait_for(predicate, timeout, what, diag, poll)


class Stream:
    """A paho QoS 1 publisher sending reading messages from several nodes; knows every
    SenML record id it sent."""

    def __init__(self, broker, nodes=("n0", "n1", "n2", "n3"), seed=1):
        self.rng = random.Random(seed)
        self.nodes = list(nodes)
        self.next_seq = {n: self.rng.randrange(0, 1000) for n in self.nodes}
        self.sent: set[str] = set()
        self.client = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2,
                                                client_id=f"pub-{seed}", protocol=mqtt.MQTTv311))
        self.client.max_inflight_messages_set(100)  # for burst()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = None

    def publish_one(self, node=None, wait: bool = True) -> mqtt.MQTTMessageInfo:
        node = node or self.rng.choice(self.nodes)
        seq = self.next_seq[node]
        count = self.rng.randint(1, 3)
        records = [{1: 2000 + seq % 500, 2: 5000}] + [{0: 10, 1: 1}] * (count - 1)
        payload = cbor2.dumps([1, seq, T0 + seq, *records], canonical=True)
        info = self.client.publish(f"m/{node}/r", payload, qos=1)
        if wait:
            info.wait_for_publish(10)
            assert info.is_published()
        self.sent.update({f"{node}/{seq}/temperature", f"{node}/{seq}/humidity"})
        self.sent.update(f"{node}/{seq + i}/temperature" for i in range(1, count))
        self.next_seq[node] = seq + count + (5 if self.rng.random() < 0.05 else 0)  # gaps too
        return info

    def burst(self, n: int) -> None:
        """n messages as fast as the broker takes them (without gaps)."""
        infos = []
        for _ in range(n):
            node = self.rng.choice(self.nodes)
            infos.append(self.publish_one(node, wait=False))
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def run(self, interval: float) -> None:
        def loop():
            while not self._stop.is_set():
                self.publish_one()
                time.sleep(interval)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def close(self) -> None:
        self.stop()
        self.client.disconnect()
        self.client.loop_stop()


def http_sink(up: Upstream, **keys) -> str:
    text = f'[sinks.http]\nurl = "{up.url}"\n'
    for k, v in {"batch_max_records": 50, "batch_max_age_s": 0.1, "backoff_initial_s": 0.05,
                 "backoff_max_s": 0.5, "timeout_s": 1.0, **keys}.items():
        text += f"{k} = {v}\n"
    return text


def test_sigkill_at_20_random_instants_loses_nothing_and_counts_once(tmp_path, broker):
    rng = random.Random(20)
    with Upstream() as up:
        gw = GatewayProcess(tmp_path / "gw", broker, "gw-kill", extra=http_sink(up))
        stream = Stream(broker)
        try:
            wait_for("the gateway to subscribe", lambda: gw.counters().get("subscribed"))
            stream.run(0.004)
            for _ in range(20):
                time.sleep(rng.uniform(0.15, 0.9))
                gw.kill()
                gw.start()
            stream.stop()
            wait_for("every record at the platform",
                     lambda: {r["rid"] for r in up.records()} >= stream.sent, 60,
                     lambda: f"missing {len(stream.sent - {r['rid'] for r in up.records()})}\n"
                             f"{gw.log()[-3000:]}")
            wait_for("every record in the file sink",
                     lambda: {r["rid"] for r in gw.records()} >= stream.sent, 30)
        finally:
            stream.close()
            gw.stop()
    assert len(stream.sent) > 1000
    # after the platform's dedup by Idempotency-Key, every record counts exactly once
    counted = Counter(r["rid"] for r in up.records() if "seq" in r)
    assert set(counted) == stream.sent and max(counted.values()) == 1
    # the alarm events (the stream skips sequence numbers: gaps) count once as well
    events = Counter(r["rid"] for r in up.records() if "event" in r)
    assert events and max(events.values()) == 1
    # a record that arrived twice did so only inside the same batch, retried under its key
    keys_of = defaultdict(set)
    for _, key, records, _status in up.requests:
        for r in records:
            keys_of[r["rid"]].add(key)
    assert all(len(k) == 1 for k in keys_of.values())
    # the file sink holds each record exactly once, too
    lines = Counter(r["rid"] for r in gw.records())
    assert set(lines) == stream.sent and max(lines.values()) == 1
    assert "Traceback" not in gw.log()


def test_sigkill_while_a_large_fleet_drains_keeps_dedup_from_the_journal(tmp_path, broker):
    """Bursts from 400 nodes: the gateway's batches touch more nodes than it writes rows for,
    so their dedup state goes to the registry's journal (gateway/registry.py). Killed at
    random instants, restarted each time; then every message is sent again. Each record is
    stored once, and every message of the second round is a duplicate."""
    rng = random.Random(400)
    nodes = [f"fleet-{i}" for i in range(400)]
    gw = GatewayProcess(tmp_path / "gw", broker, "gw-fleet")
    stream = Stream(broker, nodes=nodes, seed=4)
    sent: list[tuple[str, bytes]] = []
    real = stream.client.publish

    def publish(topic, payload, qos):
        sent.append((topic, payload))
        return real(topic, payload, qos=qos)
    stream.client.publish = publish
    try:
        wait_for("the gateway to subscribe", lambda: gw.counters().get("subscribed"))
        for _ in range(8):
            burst = threading.Thread(target=stream.burst, args=(600,))
            burst.start()
            time.sleep(rng.uniform(0.1, 0.6))
            gw.kill()
            burst.join(60)
            gw.start()
            wait_for("the gateway to subscribe again", lambda: "event=subscribed" in gw.log())
        wait_for("every record in the file sink",
                 lambda: {r["rid"] for r in gw.records()} >= stream.sent, 60,
                 lambda: f"missing {len(stream.sent - {r['rid'] for r in gw.records()})}")
        # the whole stream again: nothing new may be stored
        stats = gw.dir / "stats.json"
        time.sleep(2.5)  # the stats file is written every second
        before = gw.counters()
        for topic, payload in list(sent):
            real(topic, payload, qos=1).wait_for_publish(30)
        wait_for("the repeats counted", lambda: gw.counters().get("received", 0)
                 >= before.get("received", 0) + len(sent), 60, stats.read_text)
        after = gw.counters()
    finally:
        stream.close()
        gw.stop()
    assert len(stream.sent) > 4000
    assert after["accepted_records"] == before["accepted_records"], (before, after)
    lines = Counter(r["rid"] for r in gw.records())
    assert set(lines) == stream.sent and max(lines.values()) == 1
    # the dedup state of some batches was in the journal when the gateway died
    assert "event=registry_recovered" in gw.log()
    assert "Traceback" not in gw.log()


def test_platform_outage_retry_after_timeouts_recovery_and_a_dead_letter(tmp_path, broker):
    with Upstream() as up:
        up.mode, up.retry_after = "503", 1
        gw = GatewayProcess(tmp_path / "gw", broker, "gw-outage", extra=http_sink(up))
        stream = Stream(broker, nodes=("w1", "w2"), seed=2)
        try:
            wait_for("the gateway to subscribe", lambda: gw.counters().get("subscribed"))
            for _ in range(60):
                stream.publish_one()
            # the file sink is not held back by the failing platform
            wait_for("the file sink", lambda: {r["rid"] for r in gw.records()} >= stream.sent)
            wait_for("three 503s", lambda: len(up.requests) >= 3)
            up.mode = "timeout"
            wait_for("two timeouts", lambda: sum(1 for r in up.requests if r[3] == 200) >= 2, 20)
            up.mode = "ok"
            wait_for("the backlog to drain",
                     lambda: {r["rid"] for r in up.records()} >= stream.sent, 30)
            status, nodes = gw.api("/api/nodes")
            assert status == 200 and {n["node"] for n in nodes} == {"w1", "w2"}

            # a permanent reject: dead-lettered with the reply, and what follows still flows
            up.mode = lambda recs: ((400, '{"error": "unknown device bad-1"}')
                                    if any(r["node"] == "bad-1" for r in recs) else (200, "{}"))
            stream.next_seq["bad-1"] = 1
            stream.publish_one("bad-1")
            dead = wait_for("the dead letter", lambda: gw.api("/api/deadletters")[1])
            stream.publish_one("w1")
            bad = {rid for rid in stream.sent if rid.startswith("bad-1/")}
            wait_for("the reading after the reject",
                     lambda: {r["rid"] for r in up.records()} >= stream.sent - bad)
            assert not any(r["node"] == "bad-1" for r in up.records())
            metrics = gw.api("/metrics")[1]
        finally:
            stream.close()
            gw.stop()
    failures = [t for t, _, _, status in up.requests if status == 503]
    assert len(failures) >= 3
    gaps = [b - a for a, b in zip(failures, failures[1:])]
    assert min(gaps) >= 0.95, f"Retry-After: 1 was not honoured: {gaps}"
    assert dead[0]["sink"] == "http" and dead[0]["status"] == 400
    assert dead[0]["reply"] == '{"error": "unknown device bad-1"}'
    assert {it["node"] for it in dead[0]["body"]} == {"bad-1"}
    counted = Counter(r["rid"] for r in up.records())
    assert max(counted.values()) == 1
    assert 'meterlink_gateway_sink_errors_total{kind="transient",sink="http"}' in metrics
    assert 'meterlink_gateway_sink_deadletters_total{sink="http"} 1' in metrics
    assert all(h.get("Content-Type") == "application/senml+json" for h in up.headers)


def test_two_gateways_on_a_shared_subscription_split_without_loss_or_duplicates(
        tmp_path, broker):
    group = 'shared_group = "meters"\n'
    a = GatewayProcess(tmp_path / "a", broker, "gw-a", mqtt_extra=group)
    b = GatewayProcess(tmp_path / "b", broker, "gw-b", mqtt_extra=group)
    stream = Stream(broker, nodes=[f"s{i}" for i in range(6)], seed=3)
    try:
        wait_for("both gateways to subscribe", lambda: a.counters().get("subscribed")
                 and b.counters().get("subscribed"))
        for _ in range(400):
            stream.publish_one()
        wait_for("the union to be complete",
                 lambda: {r["rid"] for r in a.records() + b.records()} >= stream.sent)
    finally:
        stream.close()
        a.stop()
        b.stop()
    union = Counter(r["rid"] for r in a.records() + b.records())
    assert set(union) == stream.sent and max(union.values()) == 1
    assert a.records() and b.records(), "the broker split the load between the instances"


def test_a_full_outbox_stops_ingest_then_resumes_by_itself_once_drained(tmp_path, broker):
    with Upstream() as up:
        up.mode, up.retry_after = "503", 1
        gw = GatewayProcess(tmp_path / "gw", broker, "gw-full", extra=http_sink(
            up, batch_max_records=2000) + "[outbox]\nmax_bytes = 1048576\nwarn_percent = 50\n")
        stream = Stream(broker, nodes=("f1", "f2", "f3"), seed=4)
        try:
            wait_for("the gateway to subscribe", lambda: gw.counters().get("subscribed"))
            stream.burst(9000)  # about 1.5 MiB of outbox data: more than max_bytes
            wait_for("outbox_full", lambda: "outbox_full" in str(gw.api("/api/alarms")[1]), 60,
                     lambda: gw.log()[-3000:])
            assert gw.api("/readyz")[0] == 503
            # the gateway holds back: once the file sink has its share (which frees that
            # sink's part of the outbox), nothing more is taken; the rest waits at the broker
            samples = [-1]

            def settled():
                samples.append(gw.counters()["accepted_messages"])  # stats: once a second
                return samples[-1] == samples[-2]
            wait_for("ingest to stop", settled, 30, poll=2.5)
            assert samples[-1] < 9000
            assert {r["rid"] for r in gw.records()} < stream.sent

            up.mode = "ok"
            wait_for("every record at the platform",
                     lambda: {r["rid"] for r in up.records()} >= stream.sent, 90,
                     lambda: f"{gw.counters()}\n{gw.log()[-3000:]}")
            wait_for("every record in the file sink",
                     lambda: {r["rid"] for r in gw.records()} >= stream.sent, 30)
            wait_for("the alarm to clear",
                     lambda: "outbox_full" not in str(gw.api("/api/alarms")[1]), 30)
            wait_for("the clearing event at the platform", lambda: [
                r for r in up.records() if r.get("n", "").endswith(":outbox_full")
                and r["vb"] is False], 30)
            assert gw.api("/readyz")[0] == 200
        finally:
            stream.close()
            gw.stop()
    counted = Counter(r["rid"] for r in up.records() if "seq" in r)
    assert set(counted) == stream.sent and max(counted.values()) == 1
    lines = Counter(r["rid"] for r in gw.records())
    assert set(lines) == stream.sent and max(lines.values()) == 1
    # raised once, cleared once
    events = [r["vb"] for r in up.records() if r.get("n", "").endswith(":outbox_full")]
    assert events == [True, False]
    assert "outbox_filling" in gw.log() and "Traceback" not in gw.log()
