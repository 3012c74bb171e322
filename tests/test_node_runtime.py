"""The node runtime against real parts: the firmware in the MicroPython unix port (96 KB heap
for the firmware), a real Mosquitto, and the real gateway writing its sink. These are the
delivery promises a utility bills on: a reading that was queued on the node's flash reaches the
gateway exactly once, whatever is cut, killed or restarted on the way.

A node here has four BME280s (two on each I2C bus) read every second, so it produces four
readings a second and the scenarios take seconds, not minutes."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
import zlib
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest

from gateway_support import GatewayProcess, Link, wait_for
from host_tools.vboard import VirtualNode
from host_tools.vboard.node import default_board, default_config

pytestmark = pytest.mark.slow

QUEUED = re.compile(r" I queue: queued seq=(\d+) ")


PARTS = [("0", 0x76), ("0", 0x77), ("1", 0x76), ("1", 0x77)]
PINS = {"0": {"scl": 22, "sda": 21}, "1": {"scl": 18, "sda": 19}}


def four_bme280_board() -> dict:
    board = default_board()
    board["i2c"] = {bus: dict(PINS[bus], devices=[{"model": "bme280", "address": a}
                                                   for b, a in PARTS if b == bus])
                    for bus in PINS}
    return board


def fast_node(root: Path, node_id: str, broker, *, entries: int = 4, **overrides) -> VirtualNode:
    cfg = default_config(node_id, broker.host, broker.port, interval_s=1)
    cfg["i2c"] = {bus: dict(pins) for bus, pins in PINS.items()}
    cfg["sensors"] = [{"driver": "bme280", "bus": "i2c" + bus, "address": addr, "interval_s": 1,
                       "instance": i} for i, (bus, addr) in enumerate(PARTS[:entries])]
    cfg["time"] = {"ntp": ""}
    for key, value in overrides.items():
        cfg[key] = value
    return VirtualNode(root, node_id=node_id, broker=broker, config=cfg,
                       board=four_bme280_board())


def queued(node: VirtualNode) -> list[int]:
    """Sequence numbers the node logged as durably queued (logged after the append returned)."""
    return [int(m.group(1)) for m in QUEUED.finditer(node.console())]


def delivered(gw: GatewayProcess, node_id: str) -> list[int]:
    """Sequence numbers in the gateway's sink for the node, one per reading record (a record
    has one SenML line per channel; the three BME280 channels share node and seq)."""
    seqs = {}
    for r in gw.records():
        if r["node"] == node_id:
            seqs.setdefault(r["seq"], set()).add(r["n"])
    return sorted(seqs)


def sink_lines_per_reading(gw: GatewayProcess, node_id: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in gw.records():
        if r["node"] == node_id:
            counts[r["seq"]] = counts.get(r["seq"], 0) + 1
    return counts


def debug(node: VirtualNode, gw: GatewayProcess | None = None):
    return lambda: ("--- node console (tail) ---\n" + node.console()[-4000:] +
                    ("\n--- gateway log (tail) ---\n" + gw.log()[-3000:] if gw else ""))


def assert_exactly_once(gw: GatewayProcess, node: VirtualNode, want: set[int]):
    counts = sink_lines_per_reading(gw, node.node_id)
    missing = sorted(want - set(counts))
    assert not missing, f"{len(missing)} queued readings never arrived: {missing[:20]}"
    doubled = {s: n for s, n in counts.items() if n != 3}
    assert not doubled, f"readings with other than one record (3 SenML lines): {doubled}"


class Control:
    """The operator's side of the downlink, with paho: publishes `c`/`k`, collects `a` and the
    retained `s`."""

    def __init__(self, broker, node_id: str):
        self.acks: list[dict] = []
        self.status: list[dict] = []
        self.node_id = node_id
        self.c = broker.secure(paho.Client(paho.CallbackAPIVersion.VERSION2,
                                           client_id=f"ctl-{node_id}"))
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect  # (re)subscribe on every connect: broker restarts
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        wait_for(lambda: self.subscribed, 10, "the control client's subscription")

    subscribed = False

    def _on_connect(self, client, userdata, flags, reason, properties):
        client.subscribe([(f"m/{self.node_id}/a", 1), (f"m/{self.node_id}/s", 1)])
        self.subscribed = True

    def _on_message(self, client, userdata, msg):
        body = cbor2.loads(msg.payload)
        (self.acks if msg.topic.endswith("/a") else self.status).append(body)

    def send(self, kind: str, payload: bytes, retain: bool = False):
        wait_for(self.c.is_connected, 30, "the control client (re)connected")
        self.c.publish(f"m/{self.node_id}/{kind}", payload, qos=1, retain=retain).wait_for_publish(10)

    def ack_for(self, timeout: float, **match) -> dict:
        def find():
            for a in self.acks:
                if all(a.get(k) == v for k, v in match.items()):
                    return a
            return None
        return wait_for(find, timeout, f"an ack matching {match}", lambda: repr(self.acks))

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def start_and_wait_birth(node: VirtualNode, ctl: Control) -> None:
    node.start()
    wait_for(lambda: ctl.status and ctl.status[-1].get("on"), 30, "the birth status", debug(node))


# --------------------------------------------------------------------------- store and forward
def test_offline_for_200_readings_then_all_arrive_once_in_order(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = fast_node(tmp_path / "n1", "n1", broker)
    try:
        node.start()
        wait_for(lambda: len(delivered(gw, "n1")) >= 8, 30, "the first readings", debug(node, gw))
        assert "failed" not in node.console(), debug(node)()
        broker.stop()
        before = len(queued(node))
        wait_for(lambda: len(queued(node)) >= before + 200, 90, "200 readings while offline",
                 debug(node))
        offline = set(queued(node)[before:])
        broker.start()
        wait_for(lambda: offline <= set(delivered(gw, "n1")), 120,
                 "the offline readings at the gateway", debug(node, gw))
        node.stop()
        assert_exactly_once(gw, node, set(queued(node)) & set(delivered(gw, "n1")) | offline)
        # in seq order: the sink holds each node's records in the order the gateway accepted them
        order = []
        for r in gw.records():
            if r["node"] == "n1" and (not order or order[-1] != r["seq"]):
                order.append(r["seq"])
        assert order == sorted(order), "records reached the sink out of seq order"
    finally:
        node.stop()
        gw.stop()


def test_sigkill_at_20_random_instants_loses_and_doubles_nothing(tmp_path, broker):
    rng = random.Random(20261121)
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = fast_node(tmp_path / "n2", "n2", broker)
    try:
        for _ in range(20):
            node.start()
            time.sleep(rng.uniform(0.4, 1.6))  # boot, queue writes and publishes in flight
            node.kill(power_cut=True)
        node.start()
        want = set(queued(node))
        assert len(want) > 40, f"the node queued too little to prove anything: {len(want)}"
        wait_for(lambda: want <= set(delivered(gw, "n2")), 60,
                 "every durably queued reading at the gateway", debug(node, gw))
        node.stop()
        assert_exactly_once(gw, node, want)
        # none corrupt: every value is what the environment held (20.00 C, 50.00 %RH, 1013 hPa)
        for r in gw.records():
            if r["node"] == "n2" and r["n"].split(":")[1] == "temperature":
                assert abs(r["v"] - 20.0) < 0.05, r
    finally:
        node.stop()
        gw.stop()


def test_broker_and_gateway_restarts_mid_stream(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = fast_node(tmp_path / "n3", "n3", broker)
    try:
        node.start()
        wait_for(lambda: len(delivered(gw, "n3")) >= 16, 30, "readings flowing", debug(node, gw))
        broker.stop()
        time.sleep(1.5)
        broker.start()  # same port, persistence on: the gateway's session survives
        wait_for(lambda: len(delivered(gw, "n3")) >= len(queued(node)) - 16, 60,
                 "the stream after the broker restart", debug(node, gw))
        gw.kill()  # SIGKILL mid-stream: unacknowledged messages stay with the broker
        time.sleep(1.5)
        gw.start()
        time.sleep(2)
        want = set(queued(node))  # while it runs: a reading queued just before a stop waits on flash
        wait_for(lambda: want <= set(delivered(gw, "n3")), 60,
                 "everything after the gateway restart", debug(node, gw))
        node.stop()
        assert_exactly_once(gw, node, want)
    finally:
        node.stop()
        gw.stop()


def test_queue_full_drops_are_counted_exactly_and_reported(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = fast_node(tmp_path / "n4", "n4", broker, entries=2, queue={"max_kb": 2})
    ctl = Control(broker, "n4")
    try:
        node.start()
        wait_for(lambda: delivered(gw, "n4"), 30, "the first reading", debug(node, gw))
        broker.stop()
        ctl.status.clear()
        wait_for(lambda: "full: dropped" in node.console(), 60, "the queue to overflow",
                 debug(node))
        broker.start()
        # stop new readings, then wait until the node has sent everything it kept
        ctl.send("k", cbor2.dumps({"id": 1, "cmd": "interval", "s": 3600}))
        ctl.ack_for(90, id=1)  # after the node's reconnect backoff (up to 30 s + jitter)
        time.sleep(1.5)

        def drained():
            n = len(ctl.acks)
            ctl.send("k", cbor2.dumps({"id": 100 + n, "cmd": "diag"}))
            diag = ctl.ack_for(30, id=100 + n)
            return diag if diag["q"] == 0 else None

        diag = wait_for(drained, 60, "the queue to drain", debug(node, gw))
        all_queued = set(queued(node))
        wait_for(lambda: len(set(delivered(gw, "n4")) & all_queued) + diag["qd"] >= len(all_queued),
                 30, "the gateway to store what the node sent", debug(node, gw))
        arrived = set(delivered(gw, "n4"))
        lost = all_queued - arrived
        assert lost, "nothing was dropped: the test did not overflow the queue"
        assert diag["qd"] == len(lost), (diag["qd"], len(lost), sorted(lost)[:10])
        logged = int(re.findall(r"\((\d+) dropped in all\)", node.console())[-1])
        assert logged == len(lost)
        node.stop()
        st = [s for s in ctl.status if s.get("on")]
        assert st and 0 < st[-1]["qd"] <= len(lost), "the status on reconnect reports drops"
        # drop-oldest: the lost ones are one run of the oldest, everything after them arrived
        assert lost == set(range(min(lost), max(lost) + 1)), sorted(lost)
        assert {q for q in all_queued if q > max(lost)} <= arrived
    finally:
        ctl.close()
        node.stop()
        gw.stop()


def test_lost_pubacks_resend_with_dup_and_the_gateway_drops_the_copies(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    link = Link(broker)
    node = fast_node(tmp_path / "n9", "n9", link, entries=2)
    try:
        node.start()
        wait_for(lambda: len(delivered(gw, "n9")) >= 4, 30, "readings flowing", debug(node, gw))
        link.swallow = True  # the broker gets the messages, the node never hears the PUBACKs
        time.sleep(3)
        link.down()  # the node sees the link drop with messages in flight
        link.swallow = False
        link.up()
        wait_for(lambda: "with DUP" in node.console(), 60, "the re-send with DUP", debug(node))
        time.sleep(2)
        want = set(queued(node))  # while it runs: a reading queued just before a stop waits on flash
        wait_for(lambda: want <= set(delivered(gw, "n9")), 30, "every reading", debug(node, gw))
        node.stop()
        assert_exactly_once(gw, node, want)
        assert gw.counters().get("duplicates", 0) > 0, "the re-sent copies reached the gateway"
    finally:
        link.down()
        node.stop()
        gw.stop()


def test_failing_sensor_is_counted_and_retried_without_delaying_the_others(tmp_path, broker):
    node = fast_node(tmp_path / "n10", "n10", broker, entries=2)
    ctl = Control(broker, "n10")
    try:
        node.set_environment(faults={"i2c0:0x77": "absent"})
        node.start()
        wait_for(lambda: len(queued(node)) >= 6, 30, "readings of the healthy sensor", debug(node))
        ctl.send("k", cbor2.dumps({"id": 1, "cmd": "diag"}))
        diag = ctl.ack_for(30, id=1)
        assert diag["err"]["bme280@i2c0:0x77"] >= 3, diag
        assert "bme280@i2c0:0x76" not in diag["err"], diag
        assert "failed (3 in a row)" in node.console()
        node.set_environment()  # the part is back: the sensor is probed again and reads
        before = len(queued(node))
        wait_for(lambda: len(queued(node)) >= before + 6, 30, "both sensors reading")
        last = node.console().rsplit("failed", 1)[-1]
        assert last.count("queued seq=") >= 6
    finally:
        ctl.close()
        node.stop()


# --------------------------------------------------------------------------- time
class Sntp:
    """A real (S)NTP server (RFC 4330 answers) on a loopback UDP port whose clock runs
    `offset` seconds from the host's, so a test can tell NTP time from the host clock."""

    def __init__(self, offset: int):
        self.offset = offset
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                req, addr = self.sock.recvfrom(512)
            except OSError:
                return
            if len(req) < 48 or req[0] & 7 != 3:
                continue
            self.requests += 1
            now = time.time() + self.offset + 2208988800
            secs, frac = int(now), int((now % 1) * 2**32)
            reply = bytearray(48)
            reply[0] = 0x24  # LI 0, version 4, mode 4 (server)
            reply[1] = 1  # stratum 1
            reply[24:32] = req[40:48]  # originate = the client's transmit
            for off in (32, 40):  # receive and transmit timestamps
                reply[off:off + 8] = secs.to_bytes(4, "big") + frac.to_bytes(4, "big")
            self.sock.sendto(bytes(reply), addr)

    def close(self):
        self.sock.close()


def reading_times(gw: GatewayProcess, node_id: str) -> dict[int, int]:
    return {r["seq"]: r["t"] for r in gw.records() if r["node"] == node_id}


def test_ntp_sets_the_clock_and_readings_align_to_the_interval(tmp_path, broker):
    ntp = Sntp(offset=3600)  # an hour ahead of the host: readings must carry NTP time
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = fast_node(tmp_path / "t1", "t1", broker, entries=1,
                     time={"ntp": "127.0.0.1", "ntp_port": ntp.port})
    node_cfg = node.flash / "config.json"
    cfg = json.loads(node_cfg.read_text())
    cfg["sensors"][0]["interval_s"] = 2
    node_cfg.write_text(json.dumps(cfg))
    try:
        node.start()
        wait_for(lambda: "clock set from NTP" in node.console(), 30, "the NTP answer", debug(node))
        synced_at = len(queued(node))
        wait_for(lambda: len(queued(node)) >= synced_at + 6, 60, "readings after the sync")
        # every reading queued so far reaches the gateway (the node keeps running: stopped
        # right after a reading was queued, that reading would wait on its flash)
        want = set(queued(node))
        wait_for(lambda: want <= set(reading_times(gw, "t1")), 90, "all readings", debug(node, gw))
        node.stop()
        times = reading_times(gw, "t1")
        later = [times[s] for s in sorted(want)[synced_at + 1:]]
        now = time.time()
        assert all(abs(t - (now + 3600)) < 60 for t in later), (later, now + 3600)
        # aligned to the interval's wall-clock boundaries (a reading the loaded test machine
        # delayed past a second boundary may land one second late; most must be on it)
        on = [t for t in later if t % 2 == 0]
        assert len(on) * 3 >= len(later) * 2, f"not on 2 s boundaries: {later}"
        assert ntp.requests >= 1
    finally:
        ntp.close()
        node.stop()
        gw.stop()


def node_with_offset(offset: int, spread: int) -> str:
    """A node id whose send offset is `offset` s in a `spread` of seconds: docs/node-runtime.md
    says the offset is the CRC-32 (zlib's) of the id modulo the spread."""
    return next(f"slot-{i}" for i in range(1000) if zlib.crc32(f"slot-{i}".encode()) % spread
                == offset)


def send_delays(node: VirtualNode) -> list[int]:
    """ms from each reading's `queued seq=N` to the `seq=N..` acknowledgement, by the node's
    console clock (one-reading messages)."""
    text = node.console()
    at = {int(m.group(2)): int(m.group(1)) for m in
          re.finditer(r"^(\d+) I queue: queued seq=(\d+) ", text, re.M)}
    return [int(m.group(1)) - at[int(m.group(2))] for m in
            re.finditer(r"^(\d+) I pub: seq=(\d+)\.\.\2 acked", text, re.M)
            if int(m.group(2)) in at]


def test_readings_stay_aligned_and_each_node_sends_at_its_own_slot(tmp_path, broker):
    """With the time known, a node reads on the interval's boundaries and sends its readings
    at a fixed offset into the interval from its id (here 4 s of 6), so a fleet's messages do
    not arrive in the same second; with send.spread_s 0 it sends each reading at once. A
    battery node (offset 5 s) reads on the boundary and deep-sleeps until its slot to send."""
    ntp = Sntp(offset=0)
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    spread_id, battery_id = node_with_offset(4, 6), node_with_offset(5, 6)
    nodes = []
    for nid, extra in ((spread_id, {}), ("at-once", {"send": {"spread_s": 0}}),
                       (battery_id, {"power": {"mode": "battery"}})):
        n = fast_node(tmp_path / nid, nid, broker, entries=1, **extra,
                      time={"ntp": "127.0.0.1", "ntp_port": ntp.port})
        cfg = json.loads((n.flash / "config.json").read_text())
        cfg["sensors"][0]["interval_s"] = 6
        (n.flash / "config.json").write_text(json.dumps(cfg))
        nodes.append(n.start())
    spread, at_once, battery = nodes
    try:
        for n in (spread, at_once):
            wait_for(lambda: len(send_delays(n)) >= 4, 90, "four readings sent",
                     debug(n, gw))
        wait_for(lambda: battery.console().count(", send slot)") >= 2
                 and len(reading_times(gw, battery_id)) >= 4, 60,
                 "two sends at the battery node's slot", debug(battery, gw))
        # the first reading after boot goes at once, and so may the next (taken before the
        # clock was known, it is not on a boundary); the others 4 s after they were taken
        # (the slot is a whole second: up to a second either way)
        later = send_delays(spread)[2:]
        assert later and all(3000 <= d <= 5500 for d in later), later
        assert all(d < 1500 for d in send_delays(at_once)), send_delays(at_once)
        # readings from the third on are on the 6 s boundaries (the first two were taken
        # before the clock was known; a loaded machine may delay one past a second boundary)
        times = [t for seq, t in reading_times(gw, spread_id).items() if seq >= 2]
        assert [t % 6 for t in times].count(0) * 3 >= len(times) * 2, times
        # the battery node: woken on the boundary, it slept about 5 s less its boot to send
        slot_sleeps = [int(ms) for ms in re.findall(r"deep sleep for (\d+) ms \(until the "
                                                     r"send slot\)", battery.console())]
        assert slot_sleeps and all(3000 <= ms <= 5500 for ms in slot_sleeps), slot_sleeps
        # each wake-up starts the node anew (a MicroPython process here), which on a loaded
        # machine can take it past the boundary's second before it reads
        times = [t for seq, t in reading_times(gw, battery_id).items() if seq >= 2]
        assert times and all(t % 6 in (0, 1) for t in times), times
    finally:
        ntp.close()
        for n in nodes:
            n.stop()
        gw.stop()


def test_without_ntp_relative_time_then_the_gateway_time(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = fast_node(tmp_path / "t2", "t2", broker, entries=1)
    ctl = Control(broker, "t2")
    try:
        node.start()
        wait_for(lambda: len(delivered(gw, "t2")) >= 2, 30, "relative-time readings",
                 debug(node, gw))
        now = time.time()
        for t in reading_times(gw, "t2").values():  # anchored at receipt by the gateway
            assert abs(t - now) < 30, (t, now)
        ctl.send("k", cbor2.dumps({"id": 1, "cmd": "time", "t": int(now) + 7200}))
        ack = ctl.ack_for(30, id=1)
        assert ack["ok"] and abs(ack["t"] - (now + 7200)) < 30, ack
        mark = len(queued(node))
        wait_for(lambda: len(queued(node)) >= mark + 3, 30, "readings after the gateway time")
        # the node keeps running until what it queued has arrived (stopped right after a
        # reading was queued, that reading would wait on its flash for the next start)
        want = set(queued(node))
        wait_for(lambda: want <= set(reading_times(gw, "t2")), 90, "all readings", debug(node, gw))
        node.stop()
        times = reading_times(gw, "t2")
        after = [times[s] for s in sorted(want)[mark + 1:]]
        assert all(abs(t - (now + 7200)) < 60 for t in after), (after, now + 7200)
        st = [s for s in ctl.status if "t" in s]
        assert not st or all(abs(s["t"] - (now + 7200)) < 60 for s in st)
    finally:
        ctl.close()
        node.stop()
        gw.stop()


def offline_events(gw: GatewayProcess, node_id: str) -> list[tuple[bool, str]]:
    path = gw.dir / "events.jsonl"
    events = map(json.loads, path.read_text().splitlines()) if path.exists() else []
    return [(e["vb"], e.get("vs", "")) for e in events if e["n"] == f"{node_id}:alarm:offline"]


def test_a_reboot_or_a_quick_reset_is_not_an_outage_and_a_node_gone_for_good_is(tmp_path,
                                                                               broker):
    """Field trial: every technician action raised and cleared `offline` (status, deploy,
    reboot). A restart the node announces, or a reset it is back from within
    `offline_grace_s`, raises nothing; a node that stays away raises it once."""
    gw = GatewayProcess(tmp_path / "gw", broker,
                        gateway_extra="offline_grace_s = 3\n").wait_subscribed()
    node = fast_node(tmp_path / "r1", "r1", broker, entries=1)
    ctl = Control(broker, "r1")
    try:
        node.start()
        wait_for(lambda: len(delivered(gw, "r1")) >= 2, 30, "readings", debug(node, gw))
        ctl.send("k", cbor2.dumps({"id": 1, "cmd": "reboot"}))
        ctl.ack_for(30, id=1)
        wait_for(lambda: any(s.get("bye") == "reboot" for s in ctl.status), 10,
                 "the restart announced in the status", debug(node, gw))
        mark = len(delivered(gw, "r1"))
        wait_for(lambda: len(delivered(gw, "r1")) >= mark + 2, 30, "readings after the reboot",
                 debug(node, gw))
        assert "restart not announced" not in node.console()
        node.kill(power_cut=False)  # a reset without warning (the technician's tools)
        node.start()
        mark = len(delivered(gw, "r1"))
        wait_for(lambda: len(delivered(gw, "r1")) >= mark + 2, 30, "readings after the reset",
                 debug(node, gw))
        time.sleep(4)  # past the grace
        assert offline_events(gw, "r1") == [], "no outage happened"
        node.stop()  # gone for good
        wait_for(lambda: offline_events(gw, "r1"), 20, "the offline alarm", debug(node, gw))
        [(active, detail)] = offline_events(gw, "r1")
        assert active and detail.startswith("Last Will"), detail
    finally:
        ctl.close()
        node.stop()
        gw.stop()


# --------------------------------------------------------------------------- battery mode
def test_battery_50_wakes_broker_reachable_every_10th(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    link = Link(broker)
    cfg = default_config("b1", link.host, link.port, interval_s=60)
    cfg["power"] = {"mode": "battery"}
    cfg["time"] = {"ntp": ""}
    node = VirtualNode(tmp_path / "b1", node_id="b1", broker=link, config=cfg)
    try:
        link.down()
        for wake in range(50):
            up = wake % 10 == 9
            if up:
                link.up()
            node.start(restart_on_reset=False)
            assert node.proc.wait(timeout=30) == 4, debug(node)()  # deep sleep
            node.stop()
            if up:
                wait_for(lambda: len(delivered(gw, "b1")) >= wake + 1, 20,
                         f"the readings of wake-ups 0..{wake}", debug(node, gw))
                link.down()
        assert delivered(gw, "b1") == list(range(50)), \
            "one reading per wake-up, seq 0..49 without gaps: the sequence counter lives in RTC memory"
        assert_exactly_once(gw, node, set(range(50)))
        assert (node.flash / "boots.dat").read_text() == "1", "wake-ups are not boots"
        assert node.console().count("deep sleep for") == 50
        assert node.console().count("not sent this time") == 45, "sent only when reachable"
    finally:
        link.down()
        node.stop()
        gw.stop()


# --------------------------------------------------------------------------- config and downlink
def test_bad_downlink_is_rejected_precisely_and_the_node_runs_on(tmp_path, broker):
    node = fast_node(tmp_path / "n5", "n5", broker, entries=1)
    ctl = Control(broker, "n5")
    try:
        start_and_wait_birth(node, ctl)
        enc = cbor2.dumps
        cases = [
            ("k", b"\xff\x00", None, "not CBOR: offset 0"),
            ("k", enc([1, 2]), None, "must be a CBOR map"),
            ("k", enc({"id": 1}), 1, "cmd must be a text string"),
            ("k", enc({"id": 2, "cmd": "selfdestruct"}), 2, 'unknown command "selfdestruct"'),
            ("k", enc({"id": 3, "cmd": "interval", "s": 0}), 3, "s must be an integer 1-86400"),
            ("k", enc({"id": 4, "cmd": "read", "pad": b"x" * 3000}), None,
             "larger than 1024 bytes"),
            ("c", enc({"v": "7", "patch": {}}), None, "v must be an integer >= 1"),
            ("c", enc({"v": 7, "id": 5, "patch": {"broker": {"port": "1883"}}}), 5,
             'broker.port must be an integer 1-65535: got "1883"'),
            ("c", enc({"v": 8, "id": 6, "patch": {"sensorz": []}}), 6,
             "sensorz is not a known setting"),
            ("c", enc({"v": 9, "id": 7, "patch": {"node_id": "other"}}), 7,
             "patch cannot change node_id"),
            ("c", enc({"v": 9, "id": 8, "wat": 1, "patch": {}}), 8, "unknown key wat"),
        ]
        for kind, payload, rid, reason in cases:
            n = len(ctl.acks)
            ctl.send(kind, payload)
            ack = wait_for(lambda: ctl.acks[n:] and ctl.acks[n], 30, f"the ack to {reason}",
                           debug(node))
            assert ack["ok"] is False and reason in ack["err"], (reason, ack)
            if rid is not None:
                assert ack["id"] == rid
        # still running, on its original configuration
        before = len(queued(node))
        wait_for(lambda: len(queued(node)) > before + 2, 30, "readings after the rejections")
        ctl.send("k", enc({"id": 9, "cmd": "diag"}))
        diag = ctl.ack_for(30, id=9)
        assert diag["ok"] and diag["cv"] == 0 and diag["rejected"] >= 1
        assert node.running
    finally:
        ctl.close()
        node.stop()


def test_config_update_applies_acks_and_survives_a_bad_file(tmp_path, broker):
    node = fast_node(tmp_path / "n6", "n6", broker, entries=1)
    ctl = Control(broker, "n6")
    try:
        start_and_wait_birth(node, ctl)
        ctl.send("c", cbor2.dumps({"v": 3, "id": "cfg-3", "patch": {"sensors": [
            {"driver": "bme280", "bus": "i2c0", "address": 0x76, "interval_s": 2}]}}), retain=True)
        ack = ctl.ack_for(30, id="cfg-3")
        assert ack["ok"] is True and ack["cv"] == 3
        wait_for(lambda: any(s.get("cv") == 3 and s.get("on") for s in ctl.status), 30,
                 "the node back with config v3", debug(node))
        assert any(s.get("iv") == 2 for s in ctl.status if s.get("cv") == 3)
        # the retained v3 comes again on every connect and is not applied twice
        wait_for(lambda: "config v3 ignored" in node.console(), 30, "v3 seen again and ignored")
        # a broken config.json on flash: the node boots on the last good one and says why
        node.stop()
        (node.flash / "config.json").write_text('{node_id: "n6"}')
        ctl.status.clear()
        node.start()
        st = wait_for(lambda: [s for s in ctl.status if s.get("on")], 30, "status after boot",
                      debug(node))[-1]
        assert "config.json rejected (config.json: not valid JSON)" in st["cfg_err"], st
        assert st["cv"] == 3
    finally:
        ctl.close()
        node.stop()


def test_commands_read_interval_flush_reboot(tmp_path, broker):
    node = fast_node(tmp_path / "n7", "n7", broker, entries=1)
    ctl = Control(broker, "n7")
    try:
        start_and_wait_birth(node, ctl)
        ctl.send("k", cbor2.dumps({"id": 1, "cmd": "interval", "s": 3600}))
        assert ctl.ack_for(30, id=1)["iv"] == 3600
        before = len(queued(node))
        ctl.send("k", cbor2.dumps({"id": 2, "cmd": "read"}))
        ack = ctl.ack_for(30, id=2)
        assert ack["ok"] and len(queued(node)) == before + 1 and ack["seq"] == queued(node)[-1]
        ctl.send("k", cbor2.dumps({"id": 3, "cmd": "flush"}))
        assert ctl.ack_for(30, id=3)["ok"]
        ctl.send("k", cbor2.dumps({"id": 4, "cmd": "reboot"}))
        assert ctl.ack_for(30, id=4)["ok"]
        wait_for(lambda: 3 in node.exits, 30, "the reset")
        wait_for(lambda: node.console().count("starting:") == 2, 30, "the second boot")
        st = wait_for(lambda: [s for s in ctl.status if s.get("rst") == "hard"], 30,
                      "status after the reboot")[-1]
        assert st["iv"] == 3600, "the interval command persisted across the reboot"
    finally:
        ctl.close()
        node.stop()


# --------------------------------------------------------------------------- watchdog, safe mode
def test_hung_driver_trips_the_watchdog_then_safe_mode_keeps_mqtt(tmp_path, broker):
    node = fast_node(tmp_path / "n8", "n8", broker, entries=1, watchdog_s=2, safe_mode_after=3)
    ctl = Control(broker, "n8")
    try:
        node.set_environment(faults={"i2c0": "hang"})
        node.start()
        st = wait_for(lambda: [s for s in ctl.status if s.get("safe")], 60, "safe mode",
                      debug(node))[-1]
        assert node.exits[:3] == [3, 3, 3], node.exits  # three watchdog resets
        assert "3 boots in a row crashed" in st["safe"] and st["rst"] == "wdt"
        assert node.console().count("WDT: not fed") == 3
        ctl.send("k", cbor2.dumps({"id": 1, "cmd": "read"}))
        ack = ctl.ack_for(30, id=1)
        assert ack["ok"] is False and "safe mode" in ack["err"]
        # recovery: the part is fixed, the operator reboots the node into normal operation
        node.set_environment()
        ctl.send("k", cbor2.dumps({"id": 2, "cmd": "reboot"}))
        assert ctl.ack_for(30, id=2)["ok"]
        wait_for(lambda: any(s.get("on") and "safe" not in s and s.get("rst") == "hard"
                             for s in ctl.status), 30, "normal operation again", debug(node))
        before = len(queued(node))
        wait_for(lambda: len(queued(node)) > before, 30, "readings again")
    finally:
        ctl.close()
        node.stop()


def _mqtt_packet(buf: bytes) -> tuple[int, int] | None:
    """(fixed header length, remaining length) of the first MQTT packet in `buf`, or None
    while it is incomplete."""
    size, mult = 0, 1
    for i in range(1, min(len(buf), 5)):
        size += (buf[i] & 0x7F) * mult
        if not buf[i] & 0x80:
            return (i + 1, size) if i + 1 + size <= len(buf) else None
        mult *= 128
    return None


class AckAndLose:
    """A broker that acknowledges a reading and loses it, as a NATS server does while its
    readings stream elects a leader (docs/gateway.md, "Known limit"): a relay between the node
    and a plain Mosquitto that reads the node's MQTT packets; while `lose` is set, each QoS 1
    PUBLISH on `m/<node>/r` is answered here with its PUBACK and never reaches the broker."""

    def __init__(self, broker):
        self.target = (broker.host, broker.port)
        self.host, self.port = "127.0.0.1", 0
        self.lose = False
        self.lost = 0  # readings messages acknowledged and dropped
        srv = socket.socket()
        srv.bind((self.host, 0))
        srv.listen(4)
        self.port = srv.getsockname()[1]
        self._srv = srv
        threading.Thread(target=self._accept, daemon=True).start()

    def node_tls(self, node_id=None):
        return None  # plain MQTT: the relay reads the packets

    def _accept(self):
        while True:
            try:
                a, _ = self._srv.accept()
                b = socket.create_connection(self.target)
            except OSError:
                return
            lock = threading.Lock()
            threading.Thread(target=self._down, args=(b, a, lock), daemon=True).start()
            threading.Thread(target=self._up, args=(a, b, lock), daemon=True).start()

    @staticmethod
    def _down(src, dst, lock):
        try:
            while data := src.recv(4096):
                with lock:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def _up(self, src, dst, lock):
        buf = b""
        try:
            while data := src.recv(4096):
                buf += data
                while whole := _mqtt_packet(buf):  # fixed header, remaining length, body
                    head, size = whole
                    packet, buf = buf[:head + size], buf[head + size:]
                    if self.lose and packet[0] & 0xF6 == 0x32:  # PUBLISH, QoS 1
                        tlen = int.from_bytes(packet[head:head + 2], "big")
                        topic = packet[head + 2:head + 2 + tlen]
                        if topic.endswith(b"/r"):
                            pid = packet[head + 2 + tlen:head + 4 + tlen]
                            with lock:
                                src.sendall(b"\x40\x02" + pid)
                            self.lost += 1
                            continue
                    dst.sendall(packet)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self):
        self._srv.close()


def test_readings_the_broker_acknowledged_and_lost_are_asked_again_and_arrive_once(tmp_path):
    """A broker acknowledges reading messages and loses them for 3 s: the node deleted them
    from its queue as delivered, and the gateway sees the gap. The gateway asks the node for
    the gap's range (`replay`, once the gap is `replay_after_s` old); the node sends it again
    from the acknowledged records it keeps on flash. Every reading it queued is then stored
    once, and the gap is closed."""
    from host_tools.broker import Mosquitto

    with Mosquitto(tmp_path / "broker") as broker:
        gw = GatewayProcess(tmp_path / "gw", broker,
                            gateway_extra="replay_after_s = 2\n").wait_subscribed()
        relay = AckAndLose(broker)
        node = fast_node(tmp_path / "n12", "n12", relay, entries=2)
        try:
            node.start()
            wait_for(lambda: len(delivered(gw, "n12")) >= 6, 30, "readings flowing",
                     debug(node, gw))
            relay.lose = True
            time.sleep(3)
            relay.lose = False
            assert relay.lost >= 2
            lost = wait_for(lambda: re.findall(r"event=replay_asked node=n12 first=(\d+) "
                                               r"last=(\d+)", gw.log()), 30,
                            "the gateway to ask for the gap", debug(node, gw))
            lo, hi = map(int, lost[0])
            assert hi - lo + 1 >= relay.lost  # a message holds one reading or more
            want = set(queued(node))
            wait_for(lambda: want <= set(delivered(gw, "n12")), 30, "every queued reading",
                     debug(node, gw))
            status, row = gw.api("/api/nodes/n12")
            assert status == 200 and row["gaps"] == [] and "gaps" not in row["alarms"], row
            assert f"seq={lo}.." in node.console().split("sent again (replay)")[0][-200:]
            per_reading = sink_lines_per_reading(gw, "n12")
            assert set(per_reading.values()) == {3}, per_reading  # no channel stored twice
            wait_for(lambda: gw.counters().get("replay_requests", 0) >= 1, 10,  # once a second
                     "the replay_requests counter")
            print(f"lost at the broker {relay.lost} messages, seqs {lo}..{hi}: asked for and "
                  "sent again")
        finally:
            node.stop()
            relay.close()
            gw.stop()
