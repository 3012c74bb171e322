"""Over-the-air updates, the gateway's side: `meterlink gateway ota` (docs/ota.md). An app
bundle or a firmware image, sent the same way.

    bundle = Bundle.read(Path("app-0.4.0.mlb"))          # header checked; BundleError if bad
    rollout = Rollout(mqtt_cfg, bundle, nodes, canary=1, max_failed_pct=0)
    reports = rollout.run(progress=print_progress)        # one report per node

Each node gets the bundle in chunks on `{prefix}/{node}/k` (QoS 1), one at a time: the node
answers every chunk on `a` with the chunk it wants next, and the gateway sends that one. The
node's flash holds the transfer's progress, so a node that loses power or its link, or a
gateway that is restarted, goes on from where the node is: after `ack_timeout` without an
answer the gateway asks again (`begin`, which the node answers with its next chunk). After
the last chunk the node checks the bundle, installs it in its idle slot and restarts on it;
the update is on trial until the node is healthy (connected, a reading acknowledged), and
the node answers `done` either way: ok, or rolled back with the reason.

Staged rollout: the first `canary` nodes are updated first; when more than `max_failed_pct`
of the nodes updated so far failed, the rollout stops by itself and the remaining nodes are
reported `skipped`. The rest go in waves of `parallel`. Progress per node goes to the
callback and, when `progress_file` is given, to that JSON file (the gateway's API serves it
at `GET /api/ota`).
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cbor2

from gateway import mqtt_tls
from gateway.downlink import parse_ack
from gateway.errors import WireError
from gateway.stats import write_json_atomic

MAGIC = b"MLB1"
HEADER_MAX = 4096
CHUNK_DEFAULT = 512
CHUNK_MAX = 768
CHUNK_RETRIES = 5  # the same chunk refused this many times in a row: the node fails
RESTARTS = 2  # transfers started again after the node discarded a bad bundle


class BundleError(ValueError):
    """A bundle file that cannot be sent: says what is wrong and where."""


IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
CHIP_IDS = {0x0000: "esp32", 0x0002: "esp32s2", 0x0005: "esp32c3", 0x0009: "esp32s3",
            0x000D: "esp32c6"}


@dataclass(frozen=True)
class Bundle:
    """What a rollout sends: an app bundle (the node's .mpy modules with a header,
    host_tools/bundle.py makes it; kind "app"), or a firmware image (the ESP-IDF app image
    `make image` builds, written to the node's idle OTA partition; kind "image")."""

    data: bytes
    version: str
    chips: list[str]
    mpy: list[int] | None
    files: list[tuple[str, int]]
    kind: str = "app"

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @classmethod
    def read(cls, path: Path) -> "Bundle":
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: bytes, name: str = "bundle") -> "Bundle":
        if data[:1] == bytes([IMAGE_MAGIC]):
            return cls.parse_image(data, name)
        if data[:4] != MAGIC:
            raise BundleError(f"{name}: offset 0: not a meterlink bundle (magic {data[:4]!r}, "
                              f"expected {MAGIC!r})")
        if len(data) < 8:
            raise BundleError(f"{name}: offset 4: truncated header length")
        (hlen,) = struct.unpack(">I", data[4:8])
        if not 1 <= hlen <= HEADER_MAX or 8 + hlen > len(data):
            raise BundleError(f"{name}: offset 4: header length {hlen} out of range")
        try:
            h = cbor2.loads(data[8:8 + hlen])
        except Exception as exc:  # noqa: BLE001 - cbor2 raises several types
            raise BundleError(f"{name}: offset 8: header is not CBOR: {exc}") from exc
        if not isinstance(h, dict):
            raise BundleError(f"{name}: offset 8: header must be a map")
        v = h.get("v")
        if not isinstance(v, str) or len(v.split(".")) != 3 or \
                not all(p.isdigit() for p in v.split(".")):
            raise BundleError(f"{name}: header v must be a version a.b.c: got {v!r}")
        files = h.get("files")
        if not isinstance(files, list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                and isinstance(e[1], int) for e in files):
            raise BundleError(f"{name}: header files must be a list of [name, size]")
        if 8 + hlen + sum(e[1] for e in files) != len(data):
            raise BundleError(f"{name}: the header lists {sum(e[1] for e in files)} bytes of "
                              f"files, the bundle holds {len(data) - 8 - hlen}")
        chips, mpy = h.get("chips"), h.get("mpy")
        if not isinstance(chips, list) or not chips or not all(isinstance(c, str) for c in chips):
            raise BundleError(f"{name}: header chips must be a list of chip names")
        if not (isinstance(mpy, list) and len(mpy) == 2 and all(isinstance(x, int) for x in mpy)):
            raise BundleError(f"{name}: header mpy must be [version, sub-version]")
        return cls(data, v, chips, mpy, [(e[0], e[1]) for e in files])

    @classmethod
    def parse_image(cls, data: bytes, name: str = "image") -> "Bundle":
        """An ESP-IDF app image: header (chip id at offset 12), the app description
        (esp_app_desc_t at offset 32: magic, version at offset 48), segments, checksum and
        the appended SHA-256, checked with esptool as the node's bootloader will."""
        from esptool.bin_image import LoadFirmwareImage

        if len(data) < 32 + 256:
            raise BundleError(f"{name}: {len(data)} bytes: too short for an ESP-IDF app image")
        (chip_id,) = struct.unpack_from("<H", data, 12)
        chip = CHIP_IDS.get(chip_id)
        if chip is None:
            raise BundleError(f"{name}: offset 12: unknown chip id {chip_id:#06x}")
        (magic,) = struct.unpack_from("<I", data, 32)
        if magic != APP_DESC_MAGIC:
            raise BundleError(f"{name}: offset 32: no app description (magic {magic:#010x}, "
                              f"expected {APP_DESC_MAGIC:#010x}): not an app image")
        version = data[48:80].split(b"\0")[0].decode(errors="replace")
        if len(version.split(".")) != 3 or not all(p.isdigit() for p in version.split(".")):
            raise BundleError(f"{name}: offset 48: the image's version {version!r} is not a.b.c "
                              "(build it with `make image`, which sets it)")
        try:
            img = LoadFirmwareImage(chip, data)
        except Exception as exc:  # noqa: BLE001 - esptool raises FatalError and struct errors
            raise BundleError(f"{name}: not a valid {chip} image: {exc}") from exc
        if img.checksum != img.calculate_checksum():
            raise BundleError(f"{name}: checksum {img.checksum:#04x} does not match the "
                              f"segments ({img.calculate_checksum():#04x}): a damaged image")
        if getattr(img, "append_digest", False) and img.stored_digest != img.calc_digest:
            raise BundleError(f"{name}: the appended SHA-256 does not match: a damaged image")
        return cls(data, version, [chip], None, [], kind="image")


@dataclass
class NodeUpdate:
    """One node's update: where it is, and how it ended."""

    node: str
    request_id: str
    chunks: int
    state: str = "waiting"  # waiting, sending, installing, trial, done, failed, skipped
    next: int = 0
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    last_heard: float = 0.0
    last_asked: float = 0.0
    sent_at: dict[int, float] = field(default_factory=dict)
    refusals: int = 0
    restarts: int = 0
    resends: int = 0

    @property
    def over(self) -> bool:
        return self.state in ("done", "failed", "skipped")

    def report(self) -> dict[str, Any]:
        r: dict[str, Any] = {"node": self.node, "state": self.state, "chunks": self.chunks,
                             "next": self.next}
        if self.error:
            r["error"] = self.error
        if self.started is not None:
            r["seconds"] = round((self.finished or time.time()) - self.started, 1)
        if self.resends:
            r["resends"] = self.resends
        return r


class Rollout:
    """Sends one bundle to nodes, canaries first (see the module docstring)."""

    def __init__(self, mqtt_cfg: Any, bundle: Bundle, nodes: list[str], *, canary: int = 0,
                 max_failed_pct: float = 0.0, parallel: int = 8, chunk: int = CHUNK_DEFAULT,
                 deadline_s: int = 300, ack_timeout: float = 15.0, timeout: float = 1800.0,
                 force: bool = False, progress_file: Path | None = None) -> None:
        if not 64 <= chunk <= CHUNK_MAX:
            raise ValueError(f"chunk must be 64-{CHUNK_MAX} bytes: got {chunk}")
        if not nodes:
            raise ValueError("no nodes to update")
        if not 0 <= canary <= len(nodes):
            raise ValueError(f"canary must be 0-{len(nodes)}: got {canary}")
        self.cfg = mqtt_cfg
        self.bundle = bundle
        self.chunk = chunk
        self.deadline_s = deadline_s
        self.ack_timeout = ack_timeout
        self.timeout = timeout
        self.force = force
        self.canary = canary
        self.max_failed_pct = max_failed_pct
        self.parallel = max(1, parallel)
        self.progress_file = progress_file
        self.sha = bundle.sha256  # what the nodes check the whole bundle against
        self.rollout_id = "ota-" + os.urandom(3).hex()
        total = math.ceil(len(bundle.data) / chunk)
        self.updates = {n: NodeUpdate(n, f"{self.rollout_id}-{i}", total)
                        for i, n in enumerate(dict.fromkeys(nodes))}
        self.stopped: str | None = None
        self._acks: queue.Queue[tuple[str, dict]] = queue.Queue()
        self._client: Any = None

    # ---- messages ----------------------------------------------------------------------
    def _publish(self, node: str, body: dict[str, Any]) -> None:
        body = {**body, "cmd": "ota", "id": self.updates[node].request_id}
        self._client.publish(f"{self.cfg.prefix}/{node}/k", cbor2.dumps(body, canonical=True),
                             qos=1)

    def _begin(self, u: NodeUpdate) -> None:
        b = self.bundle
        msg = {"op": "begin", "kind": b.kind, "v": b.version, "size": len(b.data),
               "sha": self.sha, "cs": self.chunk, "chips": b.chips, "dl": self.deadline_s,
               "t": int(time.time())}
        if b.mpy is not None:
            msg["mpy"] = b.mpy
        if self.force:
            msg["force"] = True
        u.last_asked = time.monotonic()
        self._publish(u.node, msg)

    def _send_chunk(self, u: NodeUpdate, n: int) -> None:
        d = self.bundle.data[n * self.chunk:(n + 1) * self.chunk]
        u.next = n
        now = time.monotonic()
        if n in u.sent_at:
            u.resends += 1
        u.sent_at[n] = now
        u.last_asked = now
        self._publish(u.node, {"op": "chunk", "n": n, "d": d, "h": hashlib.sha256(d).digest(),
                               "s": self.sha[:8]})

    def _fail(self, u: NodeUpdate, error: str) -> None:
        u.state, u.error, u.finished = "failed", error, time.time()

    def _on_ack(self, u: NodeUpdate, ack: dict[str, Any]) -> None:
        """Moves one node's update on by the node's answer."""
        u.last_heard = time.monotonic()
        op, nxt = ack.get("op"), ack.get("next")
        if op == "done":
            if ack.get("ok"):
                u.state, u.finished, u.next = "done", time.time(), u.chunks
            else:
                self._fail(u, str(ack.get("err")))
            return
        if u.state == "trial" and op != "installed":
            return  # late answers to chunks: the node is past them
        if not ack.get("ok"):
            err = str(ack.get("err"))
            if isinstance(nxt, int):  # a chunk refused (damaged on the way): send it again
                u.refusals += 1
                if u.refusals > CHUNK_RETRIES:
                    self._fail(u, f"chunk {nxt} refused {u.refusals} times: {err}")
                else:
                    self._send_chunk(u, nxt)
            elif "send it again" in err and u.restarts < RESTARTS:
                u.restarts += 1
                u.state = "sending"
                self._begin(u)
            else:
                self._fail(u, err)
            return
        if op == "installed":
            u.state, u.next = "trial", u.chunks
            return
        if not isinstance(nxt, int) or nxt >= u.chunks:
            return
        if nxt == u.next and nxt in u.sent_at and \
                time.monotonic() - u.sent_at[nxt] < min(2.0, self.ack_timeout):
            return  # an answer to a repeated message: the chunk is on its way already
        if op == "chunk" and nxt == u.next + 1:
            u.refusals = 0
        self._send_chunk(u, nxt)

    # ---- the run -----------------------------------------------------------------------
    def _connect(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"{self.cfg.client_id}-ota-{os.getpid()}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        mqtt_tls.apply(client, tls=self.cfg.tls, ca_file=self.cfg.ca_file,
                       cert_file=self.cfg.cert_file, key_file=self.cfg.key_file)
        client.max_queued_messages_set(0)

        def on_message(c: Any, userdata: Any, message: Any) -> None:
            node = message.topic.split("/")[-2]
            try:
                ack = parse_ack(message.payload)
            except WireError:
                return
            if ack.get("cmd") == "ota" and node in self.updates and \
                    str(ack.get("id")) == self.updates[node].request_id:
                self._acks.put((node, ack))

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:
                return
            # one chunk at a time: each waits for the node's answer, so a small packet must
            # not wait for the delayed ACK of the last one (Nagle): up to 40 ms per chunk
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # on every connect: after a lost link paho connects again, with a clean session
            c.subscribe([(f"{self.cfg.prefix}/{n}/a", 1) for n in self.updates])

        client.on_message = on_message
        client.on_connect = on_connect
        client.on_subscribe = lambda *a: subscribed.set()
        client.reconnect_delay_set(1, 5)
        client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        client.loop_start()
        if not subscribed.wait(10):
            client.loop_stop()
            raise OSError("the broker did not confirm the subscription to acknowledgements")
        self._client = client

    def _waves(self) -> list[list[str]]:
        names = list(self.updates)
        waves = [names[:self.canary]] if self.canary else []
        rest = names[self.canary:]
        waves += [rest[i:i + self.parallel] for i in range(0, len(rest), self.parallel)]
        return waves

    def _failed_share(self) -> float:
        tried = [u for u in self.updates.values() if u.over and u.state != "skipped"]
        if not tried:
            return 0.0
        return 100.0 * sum(u.state == "failed" for u in tried) / len(tried)

    def run(self, progress: Callable[["Rollout"], None] | None = None) -> list[dict[str, Any]]:
        self._connect()
        try:
            waves = self._waves()
            for i, wave in enumerate(waves):
                self._run_wave(wave, progress)
                share = self._failed_share()
                if share > self.max_failed_pct and i + 1 < len(waves):
                    failed = sum(u.state == "failed" for u in self.updates.values())
                    what = "canaries" if i == 0 and self.canary else "nodes updated so far"
                    self.stopped = (f"stopped: {failed} of the {what} failed ({share:.0f} %, "
                                    f"more than the {self.max_failed_pct:g} % allowed)")
                    for later in waves[i + 1:]:
                        for n in later:
                            u = self.updates[n]
                            u.state, u.error = "skipped", self.stopped
                    break
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self._write_progress()
            if progress:
                progress(self)
        return [u.report() for u in self.updates.values()]

    def _run_wave(self, wave: list[str], progress: Callable | None) -> None:
        start = time.monotonic()
        for n in wave:
            u = self.updates[n]
            u.state, u.started = "sending", time.time()
            self._begin(u)
        last_progress = 0.0
        while not all(self.updates[n].over for n in wave):
            try:
                node, ack = self._acks.get(timeout=0.2)
                u = self.updates[node]
                if not u.over and node in wave:
                    self._on_ack(u, ack)
            except queue.Empty:
                pass
            now = time.monotonic()
            for n in wave:
                u = self.updates[n]
                if u.over:
                    continue
                if now - start > self.timeout:
                    self._fail(u, f"no answer within {self.timeout:g} s (at chunk {u.next} of "
                                  f"{u.chunks}, {u.state})")
                    continue
                # silence: the node lost power or its link; ask where it is. On trial it is
                # proving the update; its answer comes when it is healthy or rolled back.
                limit = self.ack_timeout if u.state != "trial" else self.deadline_s + 60
                if now - u.last_asked > limit:
                    if u.state == "trial":
                        self._fail(u, f"no answer within {self.deadline_s + 60} s of installing")
                    else:
                        self._begin(u)
            if progress and now - last_progress > 0.5:
                last_progress = now
                progress(self)
                self._write_progress()

    def progress_view(self) -> dict[str, Any]:
        return {"rollout": self.rollout_id, "version": self.bundle.version,
                "bytes": len(self.bundle.data), "chunk": self.chunk,
                "stopped": self.stopped, "updated": time.time(),
                "nodes": [u.report() for u in self.updates.values()]}

    def _write_progress(self) -> None:
        if self.progress_file is None:
            return
        write_json_atomic(self.progress_file, self.progress_view())


def bar(u: dict[str, Any], width: int = 30) -> str:
    """`node-01  [#############-----------------]  52/120 sending`"""
    done = u["next"] if u["state"] != "done" else u["chunks"]
    filled = int(width * done / max(1, u["chunks"]))
    text = f"{u['node']:<20} [{'#' * filled}{'-' * (width - filled)}] {done:>4}/{u['chunks']} " \
           f"{u['state']}"
    if u.get("error"):
        text += f": {u['error']}"
    return text
