"""Seed inputs for the fuzz targets: the test vectors, the frames the driver tests use, the
messages the docs describe, and a few hostile shapes per decoder.

    python tests/fuzz/seeds.py [TARGET ...]     adds the seeds to tests/fuzz/corpus/TARGET/

Run once to start a corpus (run.py --merge keeps what adds coverage). A seed file is named
`seed-<sha1 prefix>`; files already there are left alone.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import cbor2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"
T0 = 1763712000
TOKEN = "Authorization: Bearer fuzz-token\r\n"


def reading() -> list[bytes]:
    out = []
    for path in sorted((ROOT / "tests" / "vectors").glob("**/*.json")):
        vec = json.loads(path.read_text())
        if isinstance(vec, dict) and isinstance(vec.get("hex"), str):
            out.append(bytes.fromhex(vec["hex"]))
    big = [1, 0, T0] + [{0: 60, **{k: 2**52 - k for k in (1, 2, 3, 4, 5, 7, 8, 15)}}] * 64
    out.append(cbor2.dumps(big))  # well-formed, over the 4096-byte limit
    out.append(cbor2.dumps([1, 2**32 - 1, -1 - 3600, {1: 1}]))
    out.append(cbor2.dumps([1, 2**32 - 64, T0, *[{1: i} for i in range(64)]]))
    return out


def topic() -> list[bytes]:
    return [t.encode() for t in ("m/node-01/r", "m/node-01/s", "m/node-01/a", "m/a/b/c", "m//r",
                                 "m/" + "n" * 32 + "/r", "m/-x/r", "m/N/r", "x/node/r")]


def status() -> list[bytes]:
    maps = [{"on": False}, {"on": False, "sleep": 600}, {"on": False, "bye": "reboot"},
            {"on": True, "fw": "0.3.0", "boot": 12, "rst": "power", "up": 30, "t": T0,
             "mode": "mains", "cv": 3, "iv": 60, "q": 0, "qd": 0, "seq": 1042, "heap": 40960,
             "rssi": -67, "bat": 3712, "err": {"bme280@i2c0:118": 2},
             "cfg_err": "config.json rejected", "safe": "3 boots", "trial": True},
            {"on": True, "qd": 9}, {"on": True, "q": -1}, {"on": "yes"}, {"off": True}]
    return [cbor2.dumps(m, canonical=True) for m in maps] + [b"", b"\xa0", b"\x80"]


def ack() -> list[bytes]:
    maps = [{"id": "gw-00000001", "cmd": "read", "ok": True, "seq": 42},
            {"id": "gw-00000001", "cmd": "config", "ok": True, "cv": 4},
            {"id": 7, "cmd": "interval", "ok": False, "err": "s must be an integer 1-86400"},
            {"id": "gw-1", "cmd": "ota", "ok": True, "op": "chunk", "next": 12},
            {"cmd": "config", "ok": False, "err": "v0: not valid JSON"},
            {"id": "gw-00000001", "cmd": "diag", "ok": True, "q": 3, "last": {"a": {"1": 2}}},
            {"ok": 1}]
    return [cbor2.dumps(m, canonical=True) for m in maps]


def gateway_config() -> list[bytes]:
    sample = (ROOT / "gateway" / "sample.toml").read_text()
    uncommented = "\n".join(line[2:] if line.startswith("# ") and "=" in line else line
                            for line in sample.splitlines())
    out = [sample.encode(), uncommented.encode()]
    out += [s.encode() for s in (
        '[sinks.file]\n',
        '[sink]\npath = "readings.jsonl"\n',
        '[mqtt]\nhost = "broker"\nport = 8883\ntls = true\nca_file = "ca.pem"\n'
        'cert_file = "gw.pem"\nkey_file = "gw.key"\nshared_group = "gw"\n'
        '[sinks.http]\nurl = "https://platform.example/senml"\ntoken_file = "t"\n',
        '[ingest]\ntime_min = 2021-06-01\nmax_future_s = 3600\n[sinks.mqtt]\nhost = "up"\n',
        '[ingest]\ntime_min = 2021-06-01T10:00:00+02:00\n[sinks.ngsi-ld]\n'
        'url = "http://orion:1026"\ntenant = "city"\n',
        '[gateway]\nack_timeout_s = 1.5\noffline_grace_s = 0\nlog_level = "debug"\n'
        '[outbox]\npath = "~/outbox.db"\n[sinks.file]\nbackoff_max_s = 0.5\n'
        'backoff_initial_s = 1\n',
        '[api]\nenabled = false\n[sinks.file]\n[sinks.http]\nurl = "http://x"\n')]
    return out


def _req(method: str, path: str, body: object = None, extra: str = "") -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: gw\r\n{TOKEN}{extra}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


def api() -> list[bytes]:
    reg = {"board": "esp32-devkitc", "sensors": [{"driver": "bme280"}], "interval_s": 60,
           "group": "g1"}
    return [
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
        _req("GET", "/readyz"), _req("GET", "/metrics"), _req("GET", "/api/nodes"),
        _req("GET", "/api/nodes?retired=true"), _req("GET", "/api/nodes/n1"),
        _req("GET", "/api/nodes/zz"), _req("PUT", "/api/nodes/n9", reg),
        _req("PUT", "/api/nodes/n1", {"board": "b", "sensors": [], "interval_s": 60.0}),
        _req("POST", "/api/nodes/n1/retire", {"note": "moved"}),
        _req("POST", "/api/nodes/n3/reinstate"), _req("DELETE", "/api/nodes/n4"),
        _req("DELETE", "/api/nodes/n2"), _req("GET", "/api/alarms"),
        _req("GET", "/api/quarantine?reason=cbor&limit=5"),
        _req("GET", "/api/deadletters?sink=file&limit=1"),
        _req("POST", "/api/deadletters/1/replay", {"again": True}),
        _req("POST", "/api/send", {"node": "n1", "cmd": "interval", "args": {"s": 60},
                                   "timeout_s": 1}),
        _req("POST", "/api/send", {"group": "g1", "config": {"power": {"mode": "battery"}},
                                   "version": 2, "wait": False}),
        _req("POST", "/api/send", {"nodes": ["n1", "n2"], "cmd": "read"}),
        _req("GET", "/api/ota"), _req("GET", "/openapi.json"),
        _req("GET", "/api/nodes/n2/series?channels=water_volume,temperature&from=1763700000"
                    "&to=1763900000&step=3600"),
        _req("GET", "/api/nodes/n2/consumption?channel=water_volume&from=0&to=1e11"),
        _req("GET", "/api/nodes/n1/series?step=0"), _req("GET", "/api/nodes/n2/series"),
        _req("GET", "/api/nodes/n2/consumption"),
        b"GET /login?next=/nodes/n1 HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 28\r\n\r\ntoken=fuzz-token&csrf=x&next=",
        b"GET /dash/nodes.json HTTP/1.1\r\nHost: gw\r\nCookie: session=x\r\n\r\n",
        b"GET /dash/static/app.js HTTP/1.1\r\nHost: gw\r\n\r\n",
        _req("PATCH", "/api/nodes/n1", {}),
        b"GET /api/nodes HTTP/1.1\r\nHost: gw\r\n\r\n",
        _req("PUT", "/api/nodes/n9", None, "Content-Length: 5\r\n") + b"{\"a\":",
        _req("POST", "/api/send", None, "Transfer-Encoding: chunked\r\n") +
        b"5\r\n{\"nod\r\n0\r\n\r\n",
    ]


GOOD = {"node_id": "node-01", "prefix": "m", "wifi": {"ssid": "utility-iot", "password": "pw"},
        "broker": {"host": "192.168.1.10", "port": 8883, "user": "node-01", "password": "x",
                   "keepalive": 60, "tls": {"ca": "ca.der", "server_name": "mqtt.example.org"}},
        "i2c": {"0": {"scl": 22, "sda": 21, "freq": 400000}},
        "uart": {"1": {"tx": 4, "rx": 5}, "2": {"tx": 17, "rx": 16, "baudrate": 2400,
                                                 "parity": "even", "de": 18}},
        "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 118, "interval_s": 60},
                    {"driver": "sht4x", "bus": "i2c0", "address": 68},
                    {"driver": "pulse", "a": 25, "b": 26, "tamper": 27, "litres_per_pulse": 1},
                    {"driver": "battery", "pin": 35, "divider": [100000, 100000]},
                    {"driver": "pressure", "pin": 34, "cal": [[500, 0], [4500, 10000]]},
                    {"driver": "rssi"},
                    {"driver": "ds18b20", "pin": 4, "rom": "28ff4a1c0a00005e", "instance": 1},
                    {"driver": "modbus", "uart": "uart2", "address": 1,
                     "registers": [{"reg": 0, "fn": 4, "type": "f32", "channel": "water_flow",
                                    "mul": 1000000, "div": 3600},
                                   {"reg": 4, "channel": "alarms", "mask": 1}]},
                    {"driver": "mbus", "uart": "uart2", "secondary": "12345678"},
                    {"driver": "pms5003", "uart": "uart1", "warmup_ms": 30000,
                     "interval_s": 300}],
        "power": {"mode": "battery", "send_every": 4, "awake_max_s": 60},
        "queue": {"max_kb": 64}, "time": {"ntp": "pool.ntp.org"}, "watchdog_s": 60,
        "safe_mode_after": 3, "version": 2}


def node_config() -> list[bytes]:
    small = {"node_id": "n", "broker": {"host": "h"}}
    bad = {"node_id": "Node 1", "broker": {"port": "1883"}, "sensors": [{"driver": "x"}, 3],
           "i2c": {"7": {}}, "uart": {"0": []}, "typo": 1}
    out = [json.dumps(GOOD).encode(), json.dumps(small).encode(), json.dumps(bad).encode(),
           b"", b"{", b"[]", b"null"]
    for board in sorted((ROOT / "boards").glob("*.json")):
        out.append(board.read_bytes())
    return out


def _cbor(obj: dict) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def node_downlink() -> list[bytes]:
    bundle_head = cbor2.dumps({"v": "0.4.0", "chips": ["esp32"], "mpy": [6, 3],
                               "files": [["x.mpy", 70]]}, canonical=True)
    bundle = b"MLB1" + len(bundle_head).to_bytes(4, "big") + bundle_head + bytes(range(70))
    sha = hashlib.sha256(bundle).digest()
    last = len(bundle) // 64
    tail = bundle[last * 64:]
    c, k = b"\x00", b"\x01"
    return [
        c + _cbor({"v": 3, "patch": {"power": {"mode": "battery"}}, "id": "gw-1", "t": T0}),
        c + _cbor({"v": 3, "patch": {"sensors": [{"driver": "rssi"}], "wifi": None}}),
        c + _cbor({"v": 3, "patch": {"node_id": "x"}}), c + _cbor({"v": 0, "patch": {}}),
        c + _cbor({"v": 2, "patch": {"broker": {"port": 0}}, "id": 5}),
        c + b"", c + b"\xa1\x61v", c + _cbor({"x": 1}),
        k + _cbor({"cmd": "read", "id": "gw-1"}), k + _cbor({"cmd": "read"}),
        k + _cbor({"cmd": "interval", "id": 1, "s": 60, "sensor": 1}),
        k + _cbor({"cmd": "interval", "id": 1, "s": 0}),
        k + _cbor({"cmd": "flush", "id": 2}), k + _cbor({"cmd": "reboot", "id": 3}),
        k + _cbor({"cmd": "diag", "id": 4}), k + _cbor({"cmd": "time", "id": 5, "t": T0}),
        k + _cbor({"cmd": "cred", "id": 6, "password": "new-secret"}),
        b"\x03" + _cbor({"cmd": "cred", "id": 6, "cert": b"\x30\x00", "key": b"\x30\x00"}),
        k + _cbor({"cmd": "nope", "id": 7}), b"\x05" + _cbor({"cmd": "read", "id": 8}),
        k + _cbor({"cmd": "ota", "id": "u1", "op": "begin", "kind": "app", "v": "0.4.0",
                   "size": len(bundle), "sha": sha, "cs": 64, "chips": ["esp32"],
                   "mpy": [6, 3], "dl": 300}),
        k + _cbor({"cmd": "ota", "id": "u1", "op": "begin", "kind": "image", "v": "0.5.0",
                   "size": 65536, "sha": sha, "cs": 512, "chips": ["esp32"]}),
        b"\x09" + _cbor({"cmd": "ota", "id": "u1", "op": "chunk", "n": last, "d": tail,
                         "h": hashlib.sha256(tail).digest(), "s": sha[:8]}),
        b"\x09" + _cbor({"cmd": "ota", "id": "u1", "op": "chunk", "n": 0, "d": bundle[:64],
                         "h": hashlib.sha256(bundle[:64]).digest(), "s": sha[:8]}),
        b"\x11" + _cbor({"cmd": "ota", "id": "u1", "op": "begin", "kind": "app", "v": "0.4.0",
                         "size": len(bundle), "sha": sha, "cs": 64, "chips": ["esp32"],
                         "mpy": [6, 3]}),
        k + _cbor({"cmd": "ota", "id": "u1", "op": "abort"}),
    ]


def _mbus_frame(body: bytes) -> bytes:
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


def mbus() -> list[bytes]:
    water = bytes.fromhex("080172" "78563412" "496a" "01" "07" "2a" "00" "0000"
                          "0c13" "56341200" "046d" "1e08353b" "02fd17" "0000")
    heat = bytes.fromhex("080572" "21436587" "496a" "01" "04" "10" "00" "0000"
                         "0406" "10270000" "0c13" "56341200" "0a5a" "4502" "0a5e" "1502"
                         "0d13" "c2" "3412" "0513" "0000c03f" "426c" "1f31" "8401" "13"
                         "10000000" "0f" "0102")
    out = [_mbus_frame(water), _mbus_frame(heat), b"\xe5", b"\x68\x03\x03\x68\x08\x01\x72",
           _mbus_frame(bytes.fromhex("080178"))]
    for path in sorted((ROOT / "tests" / "vectors" / "mbus").glob("*.hex")):
        try:
            out.append(bytes.fromhex(path.read_text().split("\n\n")[0].replace("\n", " ")))
        except ValueError:
            continue
    return out


def _crc16(data: bytes) -> bytes:
    c = 0xFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return bytes((c & 255, c >> 8))


def _modbus_answer(fn: int, words: bytes) -> bytes:
    body = bytes((1, fn, len(words))) + words
    return body + _crc16(body)


def modbus() -> list[bytes]:
    maps = [(4, 1), (4, 1), (3, 2), (3, 2), (3, 2), (4, 2), (3, 1), (4, 2), (3, 2), (4, 2)]
    out = []
    for i, (fn, regs) in enumerate(maps):
        words = struct.pack(">f", 4.5) if regs == 2 and i in (4, 5, 7) else \
            bytes(range(1, 2 * regs + 1))
        out.append(bytes((i,)) + _modbus_answer(fn, words))
    exc = bytes((1, 0x84, 2))
    out.append(b"\x00" + exc + _crc16(exc))
    out.append(b"\x04" + _modbus_answer(3, b"\x7f\x80\x00\x00"))  # +inf
    return out


def pms5003() -> list[bytes]:
    words = [28, 5, 12, 20, 5, 12, 20, 900, 300, 40, 5, 1, 0, 0x9700]
    frame = b"\x42\x4d" + b"".join(struct.pack(">H", w) for w in words)
    frame += struct.pack(">H", sum(frame) & 0xFFFF)
    return [frame, frame[:20], b"\x42\x4e" + frame[2:], frame + frame]


def _crc8(data: bytes) -> int:
    c = 0
    for b in data:
        for _ in range(8):
            mix = (c ^ b) & 1
            c >>= 1
            if mix:
                c ^= 0x8C
            b >>= 1
    return c


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def add(self, *bits: int) -> None:
        self.bits += bits

    def byte(self, b: int) -> None:
        self.bits += [(b >> i) & 1 for i in range(8)]

    def bytes(self) -> bytes:
        bits = self.bits + [1] * (-len(self.bits) % 8)
        return bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))


def _ds18b20_stream(temp_raw: int, spoil: bool = False) -> bytes:
    """One probe: its ROM search pass, then a conversion finished at the first poll, then the
    scratchpad (see node_targets.FakeOneWire)."""
    rom = bytes((0x28, 0xFF, 0x4A, 0x1C, 0x0A, 0x00, 0x00))
    rom += bytes((_crc8(rom),))
    s = _Bits()
    s.add(0)  # presence
    for i in range(64):
        bit = (rom[i >> 3] >> (i & 7)) & 1
        s.add(bit, 1 - bit)
    s.add(0)  # reset before CONVERT T: presence
    s.add(1)  # the first poll: done
    s.add(0)  # reset before READ SCRATCHPAD
    pad = bytes((temp_raw & 0xFF, (temp_raw >> 8) & 0xFF, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))
    pad += bytes((_crc8(pad) ^ (1 if spoil else 0),))
    for b in pad:
        s.byte(b)
    return s.bytes()


def ds18b20() -> list[bytes]:
    return [_ds18b20_stream(0x0159), _ds18b20_stream(0xFF5E), _ds18b20_stream(0x0550),
            _ds18b20_stream(0x07D0, spoil=True), b"", b"\xff", b"\xfe\xff\xff"]


SEEDS = {"reading": reading, "topic": topic, "status": status, "ack": ack,
         "gateway_config": gateway_config, "api": api, "node_config": node_config,
         "node_downlink": node_downlink, "mbus": mbus, "modbus": modbus, "pms5003": pms5003,
         "ds18b20": ds18b20}


def main(argv: list[str]) -> int:
    for target in argv or list(SEEDS):
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        added = 0
        for data in SEEDS[target]():
            path = folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}"
            if not path.exists():
                path.write_bytes(data)
                added += 1
        print(f"{target}: {added} seeds added")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
