"""One bad record never stops the records behind it, and a refused credential is not a bad batch.

- Ingest bounds reading times: a node clock in milliseconds, a time before 2020 or an age that
  puts a record decades back is quarantined as "time" at the time item's offset, on the hot
  path and on the careful one; the messages around it are stored.
- Every sink (file, http, ngsi-ld, mqtt, against real upstreams) with an item it cannot convert
  in the middle of a batch (a value JSON cannot hold, a time past 9999, a stored reading the
  disk damaged): that item goes to dead letters with the reason, the rest of the batch is
  delivered in the same pass.
- HTTP 401/403 pauses the sink: nothing is dead-lettered, the `sink_auth:http` alarm is raised,
  the platform is not hammered, the other sinks flow on, and writing the new token into the
  token file resumes delivery within seconds. A refused MQTT credential pauses the `mqtt` sink
  the same way.
- Dead letters are replayed from the API and from `meterlink gateway replay`, once.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import time

import cbor2
import pytest

from gateway.batcher import SinkWorker
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway.stats import Stats
from gateway.wire import Record
from gateway_support import MELINK, GatewayProcess, Recorder, publish, subscriber, wait_for
from host_tools.broker import Mosquitto

T0 = 1763712000


# ---- ingest: the plausible time window ------------------------------------------------------

def gateway(tmp_path, **ingest) -> Gateway:
    config = parse_config({"sinks": {"file": {}}, "api": {"enabled": False},
                           "ingest": ingest}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    return gw


def quarantined(gw: Gateway) -> list[tuple]:
    return gw.box.db.execute("SELECT topic, reason, offset, detail FROM quarantine "
                             "ORDER BY id").fetchall()


@pytest.mark.parametrize("time_value,why", [
    (T0 * 1000, "a clock in milliseconds"),
    (86400, "before 2020"),
    (-1 - 2**31, "an age that puts the record in 1957"),
    (T0 + 2 * 86400, "two days ahead of the gateway's clock"),
])
def test_an_implausible_time_is_quarantined_and_the_stream_flows_on(tmp_path, time_value, why):
    gw = gateway(tmp_path)
    msg = lambda seq, t: cbor2.dumps([1, seq, t, {1: 2000 + seq}])
    outcomes = [gw.handle_message("m/n1/r", msg(1, T0), received_at=T0),
                gw.handle_message("m/n1/r", msg(2, time_value), received_at=T0),
                gw.handle_message("m/n1/r", msg(3, T0 + 60), received_at=T0 + 60)]
    assert outcomes == ["accepted", "rejected", "accepted"], why
    [(topic, reason, offset, detail)] = quarantined(gw)
    assert (topic, reason, offset) == ("m/n1/r", "time", 3), detail
    assert f"time {time_value}" in detail and "outside the plausible window" in detail
    assert gw.stats.snapshot()["rejected_by_reason"] == {"time": 1}
    seqs = sorted(s for (s,) in gw.box.db.execute("SELECT seq FROM items WHERE kind != 'event'"))
    assert seqs == [1, 3]


def test_the_careful_path_bounds_time_too(tmp_path):
    """A message the hot path leaves to the careful decoder (a value in a longer head than
    needed) gets the same verdict."""
    gw = gateway(tmp_path)
    head = bytes.fromhex("8401051b") + (T0 * 1000).to_bytes(8, "big")
    assert gw.handle_message("m/n1/r", head + bytes.fromhex("a1011801"),
                             received_at=T0) == "rejected"
    assert gw.handle_message("m/n1/r", bytes.fromhex("8401051a") + T0.to_bytes(4, "big")
                             + bytes.fromhex("a1011801"), received_at=T0) == "accepted"
    [(_, reason, offset, detail)] = quarantined(gw)
    assert (reason, offset) == ("time", 3)
    assert "(a clock in milliseconds?)" in detail


def test_the_window_is_configurable(tmp_path):
    """A utility replaying an archive from 2019 widens the window; SenML's 2^28 stays the
    floor (a smaller absolute time would read as relative)."""
    from datetime import date

    from gateway.errors import ConfigError

    gw = gateway(tmp_path, time_min=date(2018, 1, 1), max_future_s=0)
    t2019 = 1546300800
    assert gw.handle_message("m/n1/r", cbor2.dumps([1, 1, t2019, {1: 1}]),
                             received_at=T0) == "accepted"
    assert gw.handle_message("m/n1/r", cbor2.dumps([1, 2, T0 + 1, {1: 1}]),
                             received_at=T0) == "rejected"
    with pytest.raises(ConfigError, match="ingest.time_min.*2\\^28"):
        parse_config({"sinks": {"file": {}}, "ingest": {"time_min": date(1975, 1, 1)}},
                     base_dir=tmp_path)
    with pytest.raises(ConfigError, match="ingest.time_min.*TOML date"):
        parse_config({"sinks": {"file": {}}, "ingest": {"time_min": "2020-01-01"}},
                     base_dir=tmp_path)


# ---- every sink: a poison item in the middle of a batch ---------------------------------------

GOOD = [{"n": "w1:water_volume", "u": "m3", "v": 12.345, "t": T0}]
NAN = '[{"n":"w1:temperature","u":"Cel","v":NaN,"t":%d}]' % T0
YEAR_10000 = [{"n": "w1:water_volume", "u": "m3", "v": 12.5, "t": 253402300800}]
DAMAGED = b"\x00garbage"  # a stored reading whose body the disk damaged
UNREADABLE = "(records) cannot be read: ValueError: bad marshal data"


def poisoned_outbox(path, sink: str, poison_bodies: list) -> Outbox:
    """Items w1 seq 1 (good), seq 2.. (poison, one per body; a str body is stored as raw JSON
    text, the way an outbox written by an older gateway can hold it; a bytes body replaces
    the stored body of a reading ingest stored), then w2 (good)."""
    box = Outbox(path, sinks=[sink])
    with box.transaction():
        box.add_item("reading", "w1", 1, GOOD, T0)
        for i, body in enumerate(poison_bodies):
            if isinstance(body, bytes):
                box.add_reading("w1", 2 + i, T0, [Record(0, {1: 2150})], T0)
                box.flush_messages()
                box.db.execute("UPDATE items SET body=? WHERE id=(SELECT MAX(id) FROM items)",
                               (body,))
                continue
            item = box.add_item("reading", "w1", 2 + i, [] if isinstance(body, str) else body, T0)
            if isinstance(body, str):
                box.db.execute("UPDATE items SET body=? WHERE id=?", (body, item))
        box.add_item("reading", "w2", 2 + len(poison_bodies),
                     [{"n": "w2:water_volume", "u": "m3", "v": 3.5, "t": T0 + 60}], T0)
    return box


def run_worker(tmp_path, sink_name: str, options: dict, poison: list, delivered) -> Outbox:
    """Delivers the poisoned outbox through a real SinkWorker; waits until `delivered()`
    returns the good records' sequence numbers."""
    config = parse_config({"sinks": {sink_name: dict(options, batch_max_age_s=0)}},
                          base_dir=tmp_path).sinks[0]
    box = poisoned_outbox(tmp_path / "o.db", sink_name, poison)
    worker = SinkWorker(make_sink(config), config, tmp_path / "o.db", Stats())
    worker.start()
    try:
        last = 2 + len(poison)
        wait_for(lambda: delivered() == [1, last], 20, "the good records upstream")
        wait_for(lambda: box.backlog(sink_name)[0] == 0, 10, "an empty outbox for the sink")
    finally:
        worker.stop()
    return box


def letters(box: Outbox) -> list[dict]:
    return box.query("SELECT sink, reason, status, reply, body FROM deadletters ORDER BY id")


def assert_poison_letters(box: Outbox, sink: str, want: list[tuple[int, str]]) -> None:
    got = letters(box)
    assert [(r["sink"], r["reason"], r["status"]) for r in got] == \
        [(sink, "unconvertible", None)] * len(want)
    for row, (seq, reason) in zip(got, want):
        [item] = json.loads(row["body"])
        assert item["seq"] == seq
        assert reason in row["reply"], row["reply"]


def test_file_sink_dead_letters_the_poison_and_writes_the_rest(tmp_path):
    path = tmp_path / "readings.jsonl"
    read = lambda: sorted({json.loads(line)["seq"] for line in path.read_text().splitlines()}) \
        if path.exists() else []
    box = run_worker(tmp_path, "file", {"path": str(path)}, [NAN, DAMAGED], read)
    assert_poison_letters(box, "file", [(2, "w1:temperature: v nan is not a finite number"),
                                        (3, "stored item 3 " + UNREADABLE)])


def test_http_sink_dead_letters_the_poison_and_posts_the_rest_in_one_request(tmp_path):
    rec = Recorder()
    try:
        def seqs():
            out = []
            for _, _, body in rec.requests:
                out += [r["seq"] for r in json.loads(gzip.decompress(body))]
            return sorted(out)
        box = run_worker(tmp_path, "http", {"url": rec.url}, [DAMAGED, NAN], seqs)
        assert len(rec.requests) == 1, "the rest of the batch went in the same pass"
        assert_poison_letters(box, "http", [(2, "stored item 2 " + UNREADABLE),
                                            (3, "w1:temperature: v nan is not a finite number")])
    finally:
        rec.close()


def test_ngsild_sink_dead_letters_a_time_past_9999_and_upserts_the_rest(tmp_path):
    """The field case: a record whose time NGSI-LD's date-time cannot hold used to make the
    sink retry the same batch every 5 s forever."""
    rec = Recorder()
    try:
        def seqs():
            out = set()
            for _, _, body in rec.requests:
                for ent in json.loads(body):
                    if ent["type"] == "WaterConsumptionObserved":
                        out.add({"urn:ngsi-ld:WaterConsumptionObserved:w1": 1,
                                 "urn:ngsi-ld:WaterConsumptionObserved:w2": 5}[ent["id"]])
            return sorted(out)
        box = run_worker(tmp_path, "ngsi-ld", {"url": rec.url}, [YEAR_10000, NAN, DAMAGED],
                         seqs)
        assert len(rec.requests) == 1, "the rest of the batch went in the same pass"
        assert_poison_letters(box, "ngsi-ld", [
            (2, "w1:water_volume: t 253402300800 is outside years 1-9999"),
            (3, "w1:temperature: v nan is not a finite number"),
            (4, "stored item 4 " + UNREADABLE)])
    finally:
        rec.close()


def test_mqtt_sink_dead_letters_the_poison_and_republishes_the_rest(tmp_path, broker):
    got: list[int] = []
    sub = subscriber(broker, lambda topic, pack: got.extend(r["seq"] for r in pack))
    try:
        box = run_worker(tmp_path, "mqtt", {"host": broker.host, "port": broker.port,
                                            "topic_prefix": "city", "tls": True,
                                            "ca_file": str(broker.tls.ca_crt)},
                         [NAN, DAMAGED], lambda: sorted(got))
        assert_poison_letters(box, "mqtt", [(2, "w1:temperature: v nan is not a finite number"),
                                            (3, "stored item 3 " + UNREADABLE)])
    finally:
        sub.loop_stop()


# ---- a refused credential pauses the sink -----------------------------------------------------

def readings(node: str, seqs) -> list[tuple[str, bytes]]:
    return [(f"m/{node}/r", cbor2.dumps([1, seq, int(time.time()), {1: 2000 + seq}]))
            for seq in seqs]


def posted_seqs(rec: Recorder) -> list[int]:
    return sorted({r["seq"] for _, headers, body in rec.requests
                   if headers.get("Authorization") == "Bearer good"
                   for r in json.loads(gzip.decompress(body)) if "seq" in r})


def alarm_events(gw: GatewayProcess) -> list[tuple[str, bool]]:
    path = gw.dir / "events.jsonl"
    if not path.exists():
        return []
    return [(e["n"], e["vb"]) for e in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
def test_a_refused_token_pauses_the_sink_until_the_token_file_is_fixed(tmp_path, broker):
    rec = Recorder()
    token = tmp_path / "platform.token"
    token.write_text("expired\n")
    rec.decide = lambda path, headers, body: (
        (200, b"{}", {}) if headers.get("Authorization") == "Bearer good"
        else (401, b'{"error":"token expired"}', {}))
    gw = GatewayProcess(tmp_path / "gw", broker, extra=(
        f'[sinks.http]\nurl = "{rec.url}"\ntoken_file = "{token}"\nbatch_max_age_s = 0.1\n'))
    try:
        gw.wait_subscribed()
        publish(broker, readings("n1", range(1, 6)))
        wait_for(lambda: gw.readings() >= {("n1", s) for s in range(1, 6)}, 20,
                 "the file sink, which a refused platform token must not hold back", gw.log)
        wait_for(lambda: "sink_paused" in gw.log(), 20, "the http sink pausing", gw.log)
        wait_for(lambda: ("-gateway:alarm:sink_auth:http", True) in alarm_events(gw), 20,
                 "the sink_auth alarm", gw.log)
        status, alarms = gw.api("/api/alarms")
        assert any(a["alarm"] == "sink_auth:http" and "HTTP 401" in a["detail"]
                   for a in alarms), alarms
        refused = len(rec.requests)
        time.sleep(3)
        assert len(rec.requests) - refused <= 1, "a paused sink does not hammer the platform"
        assert gw.api("/api/deadletters")[1] == [], "a refused token dead-letters nothing"

        fixed_at = time.monotonic()
        token.write_text("good\n")
        wait_for(lambda: posted_seqs(rec) == [1, 2, 3, 4, 5], 10,
                 "the held readings at the platform after the token was fixed", gw.log)
        assert time.monotonic() - fixed_at < 5
        wait_for(lambda: ("-gateway:alarm:sink_auth:http", False) in alarm_events(gw), 10,
                 "the sink_auth alarm cleared", gw.log)
        assert "sink_resumed" in gw.log()
    finally:
        gw.stop()
        rec.close()


@pytest.mark.slow
def test_a_refused_mqtt_credential_pauses_the_bridge_until_the_broker_takes_it(tmp_path,
                                                                               broker):
    pw = tmp_path / "upstream.passwd"
    passwd = lambda secret: subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pw), "gateway", secret], check=True,
        capture_output=True)
    passwd("right")
    pw.chmod(0o644)
    got: list[int] = []
    with Mosquitto(tmp_path / "upstream", anonymous=False,
                   extra_conf=f"password_file {pw}\n") as upstream:
        gw = GatewayProcess(tmp_path / "gw", broker, extra=(
            f'[sinks.mqtt]\nhost = "{upstream.host}"\nport = {upstream.port}\n'
            f'username = "gateway"\npassword = "changed"\nbatch_max_age_s = 0.1\n'))
        try:
            gw.wait_subscribed()
            publish(broker, readings("n2", range(1, 4)))
            wait_for(lambda: ("-gateway:alarm:sink_auth:mqtt", True) in alarm_events(gw), 30,
                     "the sink_auth alarm for the bridge", gw.log)
            assert re.search(r'bridge_refused .* reason="(Not authorized|Bad user name or '
                             r'password)"', gw.log()), gw.log()[-2000:]
            assert gw.api("/api/deadletters")[1] == []
            box = Outbox(gw.dir / "outbox.db")
            assert box.backlog("mqtt")[0] >= 3, "the readings wait in the outbox"
            box.close()

            passwd("changed")  # the platform takes the new password
            pw.chmod(0o644)
            upstream.proc.send_signal(1)  # SIGHUP: mosquitto reads its password file again
            time.sleep(0.5)
            sub = subscriber(upstream, lambda topic, pack: got.extend(
                r["seq"] for r in pack if r.get("node") == "n2"), "meterlink/#",
                client_id="platform", username="gateway", password="changed")
            wait_for(lambda: sorted(set(got)) == [1, 2, 3], 30,
                     "the held readings upstream once the broker took the credential", gw.log)
            sub.loop_stop()
        finally:
            gw.stop()


# ---- dead letters are replayed -----------------------------------------------------------------

@pytest.mark.slow
def test_dead_letters_replay_from_the_api_and_the_command_line_once(tmp_path, broker):
    rec = Recorder()
    fixed = [False]
    accepted: list[int] = []

    def decide(path, headers, body):
        if not fixed[0]:
            return 400, b'{"error":"unknown attribute unit"}', {}
        accepted.extend(r["seq"] for r in json.loads(body) if r.get("node") == "n3")
        return 200, b"{}", {}
    rec.decide = decide
    gw = GatewayProcess(tmp_path / "gw", broker, extra=(
        f'[sinks.http]\nurl = "{rec.url}"\ngzip = false\nbatch_max_age_s = 0.1\n'
        'batch_max_records = 1\n'))
    try:
        gw.wait_subscribed()
        publish(broker, readings("n3", [1, 2]))
        wait_for(lambda: len(gw.api("/api/deadletters")[1]) == 2, 20, "two dead letters",
                 gw.log)
        fixed[0] = True  # the platform learnt the unit
        posted = lambda: sorted(accepted)
        first, second = sorted(d["id"] for d in gw.api("/api/deadletters")[1])
        status, reply = gw.api(f"/api/deadletters/{first}/replay", "POST")
        assert status == 200 and reply["items"] == 1 and reply["sink"] == "http", reply
        wait_for(lambda: posted() == [1], 10, "the replayed letter at the platform", gw.log)
        status, reply = gw.api(f"/api/deadletters/{first}/replay", "POST")
        assert status == 409 and "replayed 1 time" in reply["error"], reply
        assert gw.api("/api/deadletters/999/replay", "POST")[0] == 404
        assert gw.api(f"/api/deadletters/{first}/replay", "POST", {"again": 1})[0] == 400

        listing = subprocess.run([MELINK, "gateway", "replay", "--config", str(gw.conf)],
                                 capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        assert "rejected" in listing.stdout and "HTTP 400" in listing.stdout, listing.stdout
        out = subprocess.run([MELINK, "gateway", "replay", "--config", str(gw.conf), "--all"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{second}  1 item(s) queued again for http" in out.stdout, out.stdout
        wait_for(lambda: posted() == [1, 2], 10, "the letter replayed by the command", gw.log)
    finally:
        gw.stop()
        rec.close()
