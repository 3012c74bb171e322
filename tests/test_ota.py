"""Over-the-air updates, app bundles and firmware images (docs/ota.md): real nodes (the MicroPython unix port on virtual
boards), a real Mosquitto over TLS, the real gateway; power cuts are SIGKILLs of the node.

What a utility relies on: an update reaches the node intact or not at all; a node always runs
either its old code or the new one, never neither; a bad update rolls itself back; the
readings the node queues meanwhile reach the gateway exactly once; the gateway's view of the
node's version is right; a rollout stops at its canaries when they fail."""

from __future__ import annotations

import io
import json
import random
import re
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.ota import Bundle, BundleError, Rollout
from gateway_support import MELINK, GatewayProcess, wait_for
from host_tools import bundle as bundles
from host_tools import firmware_build
from host_tools.vboard.node import VirtualNode

pytestmark = pytest.mark.slow

RUNNING = firmware_build.firmware_version()


def newer(version: str = RUNNING, step: int = 1) -> str:
    a, b, c = (int(x) for x in version.split("."))
    return f"{a}.{b + step}.0"


@pytest.fixture(scope="module")
def good_bundle() -> bytes:
    return bundles.build("xtensawin", version=newer())


def broken_bundle(tmp_path: Path, version: str, file: str, old: str, new: str) -> bytes:
    """The real firmware with one change: what a release with a bug looks like."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    sources = []
    for p in firmware_build.sources():
        text = p.read_text()
        if p.name == file:
            assert old in text, f"{old!r} not in {file}"
            text = text.replace(old, new, 1)
        (src / p.name).write_text(text)
        sources.append(src / p.name)
    return bundles.build("xtensawin", version=version, sources=sources)


def readings(gw: GatewayProcess, node_id: str) -> set[int]:
    return {r["seq"] for r in gw.records() if r["node"] == node_id}


def fw_at_gateway(gw: GatewayProcess, node_id: str):
    status, body = gw.api(f"/api/nodes/{node_id}")
    return body.get("fw") if status == 200 else None


def exactly_once(gw: GatewayProcess, node: VirtualNode) -> None:
    """Every reading the running node has queued so far is at the gateway, once. (Sequence numbers skip ahead
    after a power cut, by design (docs/wire-format.md): the node's log says what it queued.)"""
    queued = {int(x) for x in re.findall(r" queued seq=(\d+) ", node.console())}
    wait_for(lambda: queued <= readings(gw, node.node_id), 60,
             "every queued reading at the gateway",
             lambda: f"missing {sorted(queued - readings(gw, node.node_id))[:20]}")
    recs = [(r["seq"], r["n"]) for r in gw.records() if r["node"] == node.node_id]
    assert len(recs) == len(set(recs)), "a reading stored twice"


def holds(node: VirtualNode, chunk: int) -> bool:
    """Whether the node's flash holds `chunk` chunks (or more) of the update in progress."""
    try:
        return json.loads((node.flash / "ota.json").read_text())["n"] >= chunk
    except (OSError, ValueError, KeyError):
        return False


def power_cuts(node: VirtualNode, chunks: list[int], pause) -> list[int]:
    """Cuts the node's power (RTC memory lost too) as soon as its flash holds each of `chunks`,
    and powers it on again after `pause()` seconds; returns the chunk each cut fell at."""
    cut_at = []
    for chunk in chunks:
        wait_for(lambda: holds(node, chunk), 120, f"the transfer at chunk {chunk}",
                 lambda: node.console()[-3000:], poll=0.005)
        node.kill()
        cut_at.append(json.loads((node.flash / "ota.json").read_text())["n"])
        time.sleep(pause())
        node.start()
    return cut_at


def rollout(gw: GatewayProcess, data: bytes, nodes: list[str], **kw) -> Rollout:
    kw.setdefault("ack_timeout", 3.0)
    kw.setdefault("timeout", 300.0)
    return Rollout(load_config(gw.conf).mqtt, Bundle.parse(data), nodes, **kw)


class Site:
    """A broker, the gateway and nodes sending a reading a second."""

    def __init__(self, tmp_path: Path, broker, names: list[str]) -> None:
        self.gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
        self.nodes = [VirtualNode(tmp_path / n, node_id=n, broker=broker, interval_s=1)
                      for n in names]
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            wait_for(lambda: len(readings(self.gw, n.node_id)) >= 2, 60,
                     f"{n.node_id}'s first readings", lambda: n.console()[-3000:])

    def close(self) -> None:
        for n in self.nodes:
            n.stop()
        self.gw.stop()


def test_bundle_holds_the_firmware_as_mpy_and_never_the_code_that_picks_what_runs(good_bundle):
    b = Bundle.parse(good_bundle)
    names = {name for name, _ in b.files}
    assert {"node.mpy", "mqtt.mpy", "ota.mpy", "bme280.mpy"} <= names
    assert not names & {"appslot.mpy", "main.mpy", "boot.mpy", "main.py", "boot.py"}
    assert b.version == newer() and b.chips == ["esp32", "esp32s3"] and b.mpy == [6, 3]
    c3 = Bundle.parse(bundles.build("rv32imc"))
    assert c3.chips == ["esp32c3"]
    for bad, what in ((b"MLB2" + good_bundle[4:], "offset 0: not a meterlink bundle"),
                      (good_bundle[:4] + b"\xff\xff\xff\xff" + good_bundle[8:],
                       "offset 4: header length"),
                      (good_bundle[:-1], "the bundle holds")):
        with pytest.raises(BundleError, match=what):
            Bundle.parse(bad)


def test_an_update_installs_becomes_healthy_and_the_gateway_sees_the_new_version(
        tmp_path, broker, good_bundle):
    site = Site(tmp_path, broker, ["pit-01"])
    node, gw = site.nodes[0], site.gw
    try:
        path = tmp_path / "app.mlb"
        path.write_bytes(good_bundle)
        out = subprocess.run([MELINK, "gateway", "ota", "--config", str(gw.conf), "--nodes",
                              "pit-01", "--bundle", str(path), "--ack-timeout", "5"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr + node.console()[-3000:]
        assert re.search(r"pit-01 +done", out.stdout), out.stdout
        assert f"1 of 1 nodes run {newer()}" in out.stdout
        assert "[##############################]" in out.stderr  # the progress bar at 100 %
        app = json.loads((node.flash / "app.json").read_text())
        assert app == {"run": "app0", "v": newer(), "prev": None, "pv": RUNNING}
        assert f"update {newer()} is healthy: kept" in node.console()
        wait_for(lambda: fw_at_gateway(gw, "pit-01") == newer(), 30, "the new version at the gateway")
        progress = json.loads((gw.dir / "ota.json").read_text())
        assert progress["nodes"][0]["state"] == "done"
        status, body = gw.api("/api/ota")
        assert status == 200 and body["nodes"][0]["node"] == "pit-01", body
        # the same bundle again: nothing to do
        r = rollout(gw, good_bundle, ["pit-01"]).run()
        assert r[0]["state"] == "done" and r[0]["next"] == r[0]["chunks"]
        n = len(readings(gw, "pit-01"))
        wait_for(lambda: len(readings(gw, "pit-01")) >= n + 3, 30, "readings on the new code")
        exactly_once(gw, node)
    finally:
        site.close()


def test_twenty_power_cuts_at_random_chunks_end_with_the_update_and_every_reading_once(
        tmp_path, broker, good_bundle):
    site = Site(tmp_path, broker, ["pit-02"])
    node, gw = site.nodes[0], site.gw
    rng = random.Random(20261204)
    total = -(-len(good_bundle) // 512)
    cuts = sorted(rng.sample(range(1, total), 20))
    done: list = []
    r = rollout(gw, good_bundle, ["pit-02"])
    worker = threading.Thread(target=lambda: done.append(r.run()), daemon=True)
    try:
        worker.start()
        cut_at = power_cuts(node, cuts, lambda: rng.uniform(0.1, 1.0))
        worker.join(300)
        assert done, "the rollout did not finish"
        assert done[0][0]["state"] == "done", (done, node.console()[-3000:])
        assert len(cut_at) == 20
        assert json.loads((node.flash / "app.json").read_text())["v"] == newer()
        wait_for(lambda: fw_at_gateway(gw, "pit-02") == newer(), 30,
                 "the new version at the gateway")
        n = len(readings(gw, "pit-02"))
        wait_for(lambda: len(readings(gw, "pit-02")) >= n + 2, 30, "readings on the new code")
        exactly_once(gw, node)
    finally:
        site.close()


def test_a_bad_update_rolls_back_and_stops_the_rollout_at_the_canary(tmp_path, broker):
    """The update's MQTT client cannot connect: it never becomes healthy, its deadline resets
    it, the node rolls back and says why; the second node is never touched."""
    bad = broken_bundle(tmp_path, newer(step=2), "mqtt.py", "    async def connect(self):\n",
                        "    async def connect(self):\n        raise OSError('bug in 0.x')\n")
    site = Site(tmp_path, broker, ["pit-03", "pit-04"])
    canary, other = site.nodes
    gw = site.gw
    try:
        reports = rollout(gw, bad, ["pit-03", "pit-04"], canary=1, deadline_s=10).run()
        by = {r["node"]: r for r in reports}
        assert by["pit-03"]["state"] == "failed", (reports, canary.console()[-3000:])
        assert "did not become healthy within 10 s: rolled back to " + RUNNING \
            in by["pit-03"]["error"], by["pit-03"]
        assert by["pit-04"]["state"] == "skipped" and "stopped: 1 of the canaries failed" \
            in by["pit-04"]["error"]
        assert not (other.flash / "ota.json").exists() and not (other.flash / "app.json").exists()
        assert not (canary.flash / "app.json").exists(), "back on the image's firmware"
        assert (canary.flash / "ota.bad").read_text() == newer(step=2)
        wait_for(lambda: fw_at_gateway(gw, "pit-03") == RUNNING, 30, "the old version at the gateway")
        # and the node refuses the same bad version again unless forced
        r = rollout(gw, bad, ["pit-03"], deadline_s=10).run()
        assert r[0]["state"] == "failed"
        n = len(readings(gw, "pit-03"))
        wait_for(lambda: len(readings(gw, "pit-03")) >= n + 2, 30, "readings on the old code")
        for n in site.nodes:
            exactly_once(gw, n)
    finally:
        site.close()


class CorruptingRollout(Rollout):
    """Damages chunk 3 on its first trip, as a flipped bit on the way would."""

    damaged = False

    def _publish(self, node, body):
        if body.get("op") == "chunk" and body["n"] == 3 and not self.damaged:
            self.damaged = True
            body = dict(body, d=bytes([body["d"][0] ^ 0x01]) + body["d"][1:])
        super()._publish(node, body)


def test_refused_bundles_leave_the_node_on_its_code_and_a_damaged_chunk_is_sent_again(
        tmp_path, broker, good_bundle):
    site = Site(tmp_path, broker, ["pit-05"])
    node, gw = site.nodes[0], site.gw
    try:
        r = rollout(gw, bundles.build("rv32imc", version=newer()), ["pit-05"]).run()
        assert r[0]["state"] == "failed" and r[0]["error"] == "bundle for esp32c3, this node is esp32"
        r = rollout(gw, bundles.build("xtensawin", version="0.1.0"), ["pit-05"]).run()
        assert r[0]["state"] == "failed" and r[0]["error"] == \
            f"0.1.0 is not newer than the running {RUNNING} (force=true installs it anyway)"
        lying = rollout(gw, good_bundle, ["pit-05"])
        lying.sha = bytes(32)  # begin announces another bundle's hash
        r = lying.run()
        assert r[0]["state"] == "failed" and r[0]["error"].startswith(
            "bundle SHA-256 is ") and "transfer discarded, send it again" in r[0]["error"], r
        assert lying.updates["pit-05"].restarts == 2  # sent again twice, then given up
        assert not (node.flash / "ota.bin").exists() and not (node.flash / "app.json").exists()
        n = len(readings(gw, "pit-05"))
        wait_for(lambda: len(readings(gw, "pit-05")) >= n + 2, 30, "readings on the old code")

        c = CorruptingRollout(load_config(gw.conf).mqtt, Bundle.parse(good_bundle), ["pit-05"],
                              ack_timeout=3.0, timeout=300.0)
        r = c.run()
        assert r[0]["state"] == "done", (r, node.console()[-3000:])
        assert c.damaged and r[0]["resends"] >= 1
        assert "chunk 3: SHA-256 mismatch (corrupted on the way)" in node.console()
        assert json.loads((node.flash / "app.json").read_text())["v"] == newer()
        exactly_once(gw, node)
    finally:
        site.close()


def test_an_update_that_cannot_even_start_rolls_back_at_once(tmp_path, broker):
    bad = broken_bundle(tmp_path, newer(step=3), "sensors.py", '"""',
                        'raise ImportError("sensors: bug in this build")\n"""')
    site = Site(tmp_path, broker, ["pit-06"])
    node, gw = site.nodes[0], site.gw
    try:
        start = time.monotonic()
        r = rollout(gw, bad, ["pit-06"], deadline_s=300).run()
        assert r[0]["state"] == "failed", r
        assert r[0]["error"] == (f"{newer(step=3)} failed to start: ImportError('sensors: bug in "
                                 f"this build',): rolled back to {RUNNING}"), r
        assert time.monotonic() - start < 120, "it did not wait for the 300 s deadline"
        assert not (node.flash / "app.json").exists()
        wait_for(lambda: fw_at_gateway(gw, "pit-06") == RUNNING, 30, "the old version at the gateway")
        exactly_once(gw, node)
    finally:
        site.close()


# ------------------------------------------------------------------------ firmware images
def esp_image(version: str, *, chip: str = "esp32", size: int = 40000) -> bytes:
    """An ESP-IDF app image made by esptool (not by our code): header, the app description
    with `version` (esp_app_desc_t), code and data segments, checksum, appended SHA-256."""
    from esptool.bin_image import ELFSection, ESP32C3FirmwareImage, ESP32FirmwareImage

    desc = struct.pack("<II8x32s32s16s16s32s32s", 0xABCD5432, 0, version.encode(),
                       b"meterlink", b"12:00:00", b"Dec  4 2026", b"v5.2.2", bytes(32))
    img = (ESP32C3FirmwareImage if chip == "esp32c3" else ESP32FirmwareImage)()
    img.entrypoint = 0x40080000
    rng = random.Random(version)
    img.segments = [ELFSection(b".flash.appdesc", 0x3F400020, desc + bytes(256 - len(desc)), 0),
                    ELFSection(b".iram0.text", 0x40080000,
                               bytes(rng.getrandbits(8) for _ in range(size)), 0)]
    img.append_digest = True
    out = io.BytesIO()
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        img.save(f.name)
        out.write(Path(f.name).read_bytes())
    return out.getvalue()


def otadata(node: VirtualNode) -> dict:
    return json.loads((node.root / "otadata.json").read_text())


def status_at_gateway(gw: GatewayProcess, node_id: str) -> dict:
    status, body = gw.api(f"/api/nodes/{node_id}")
    return body.get("status") or {} if status == 200 else {}


def test_a_firmware_image_goes_to_the_idle_partition_survives_power_cuts_and_is_kept(
        tmp_path, broker):
    site = Site(tmp_path, broker, ["pit-07"])
    node, gw = site.nodes[0], site.gw
    image = esp_image("0.7.0")
    try:
        assert Bundle.parse(image).kind == "image" and Bundle.parse(image).chips == ["esp32"]
        done: list = []
        r = rollout(gw, image, ["pit-07"])
        worker = threading.Thread(target=lambda: done.append(r.run()), daemon=True)
        worker.start()
        total = -(-len(image) // 512)
        power_cuts(node, sorted(random.Random(7).sample(range(1, total), 5)), lambda: 0.3)
        worker.join(300)
        assert done and done[0][0]["state"] == "done", (done, node.console()[-3000:])
        d = otadata(node)
        assert (d["boot"], d["running"], d["state"]) == ("ota_1", "ota_1", "valid"), d
        assert (node.root / "ota_1.bin").read_bytes()[:len(image)] == image
        assert "update 0.7.0 is healthy: kept" in node.console()
        wait_for(lambda: status_at_gateway(gw, "pit-07").get("img") == "0.7.0", 30,
                 "the image's version at the gateway")
        exactly_once(gw, node)

        # an image that does not become healthy (no Wi-Fi on its first start): its deadline
        # resets it before it is marked valid, and the bootloader goes back to ota_1
        done.clear()
        r = rollout(gw, esp_image("0.8.0"), ["pit-07"], deadline_s=10)
        worker = threading.Thread(target=lambda: done.append(r.run()), daemon=True)
        worker.start()
        wait_for(lambda: (node.flash / "img.json").exists(), 120, "the image installed",
                 lambda: node.console()[-3000:], poll=0.002)
        node.set_environment(faults={"wifi": "down"})
        wait_for(lambda: otadata(node).get("aborted") == "ota_0", 60,
                 "the bootloader's rollback", lambda: node.console()[-3000:])
        node.set_environment()
        worker.join(300)
        assert done and done[0][0]["state"] == "failed", done
        assert done[0][0]["error"] == ("image 0.8.0 did not become healthy within 10 s: the "
                                       "bootloader went back to ota_1 (0.7.0)"), done
        wait_for(lambda: status_at_gateway(gw, "pit-07").get("img") == "0.7.0", 30,
                 "the running image's version at the gateway")
        exactly_once(gw, node)

        # refused: another chip's image; one that does not verify (a bit flipped after the
        # gateway checked it, as a bad flash write would): set_boot() refuses it
        r = rollout(gw, esp_image("0.9.0", chip="esp32c3"), ["pit-07"]).run()
        assert r[0]["error"] == "image for esp32c3, this node is esp32", r
        bad = bytearray(esp_image("0.9.0"))
        bad[5000] ^= 0x10
        with pytest.raises(BundleError, match="checksum"):
            Bundle.parse(bytes(bad))
        b = Bundle(bytes(bad), "0.9.0", ["esp32"], None, [], kind="image")
        r = Rollout(load_config(gw.conf).mqtt, b, ["pit-07"], ack_timeout=3.0).run()
        assert r[0]["state"] == "failed" and r[0]["error"].startswith(
            "the image does not verify (OSError(-5379, 'ESP_ERR_OTA_VALIDATE_FAILED')"), r
        assert otadata(node)["boot"] == "ota_1"
    finally:
        site.close()


def test_a_node_on_a_stock_image_says_it_cannot_take_a_firmware_image(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = VirtualNode(tmp_path / "pit-08", node_id="pit-08", broker=broker, interval_s=1,
                       form="mpy")
    try:
        node.start()
        wait_for(lambda: len(readings(gw, "pit-08")) >= 1, 60, "a reading",
                 lambda: node.console()[-3000:])
        r = rollout(gw, esp_image("0.7.0"), ["pit-08"]).run()
        assert r[0]["state"] == "failed" and r[0]["error"].startswith(
            "this node's image has a single app partition (a stock MicroPython image)"), r
    finally:
        node.stop()
        gw.stop()


def test_a_broker_outage_midway_costs_a_chunk_at_most_and_no_reading(tmp_path, broker,
                                                                   good_bundle):
    """The link goes for everyone (the broker restarts) half way through: the node and the
    rollout connect again and carry on from the node's chunk."""
    site = Site(tmp_path, broker, ["pit-09"])
    node, gw = site.nodes[0], site.gw
    done: list = []
    r = rollout(gw, good_bundle, ["pit-09"])
    worker = threading.Thread(target=lambda: done.append(r.run()), daemon=True)
    try:
        worker.start()

        wait_for(lambda: holds(node, 70), 120, "the transfer half way",
                 lambda: node.console()[-3000:])
        broker.stop()
        time.sleep(3)
        broker.start()
        worker.join(300)
        assert done and done[0][0]["state"] == "done", (done, node.console()[-3000:])
        assert "resuming" in node.console() or done[0][0].get("resends", 0) >= 1
        wait_for(lambda: fw_at_gateway(gw, "pit-09") == newer(), 60, "the new version at the gateway")
        exactly_once(gw, node)
    finally:
        site.close()
