"""`meterlink provision` against the virtual board on a pty and a real Mosquitto that enforces
the password_file and acl_file it wrote: the node's credentials work, another node's topics are
refused by Mosquitto itself, re-provisioning rotates the password, the config is validated by
the firmware's rules in MicroPython, and the node is registered with the real gateway."""

from __future__ import annotations

import io
import json
import re
import signal
import threading
import time

import paho.mqtt.client as paho
import pytest

from host_tools import cli, cmd_provision, device
from meterlink_common import UserError
from host_tools.broker import Mosquitto
from host_tools.pki import fleet_acl
from host_tools.vboard.pty_repl import PtyBoard
from gateway_support import GatewayProcess, wait_for

pytestmark = pytest.mark.slow
BOARD = "esp32-devkitc"


@pytest.fixture
def board(tmp_path):
    with PtyBoard(tmp_path / "node") as b:
        yield b


def provision(capsys, port, *extra):
    rc = cli.main(["provision", "--board", BOARD, "--port", port, *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


class Client:
    """A paho client that records what it gets; connect() returns the CONNACK reason."""

    def __init__(self, port, user, password, client_id):
        self.port = port
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.username_pw_set(user, password)
        self.connack = threading.Event()
        self.rc = None
        self.got: list[tuple[str, bytes]] = []
        self.suback: dict[int, list[int]] = {}
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(self, c, u, flags, rc, props):
        self.rc = rc.value
        self.connack.set()

    def _on_message(self, c, u, msg):
        with self.cond:
            self.got.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props):
        with self.cond:
            self.suback[mid] = [r.value for r in rcs]
            self.cond.notify_all()

    def connect(self) -> int:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        assert self.connack.wait(5)
        return self.rc

    def subscribe(self, topic) -> list[int]:
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.suback, 5)
            return self.suback[mid]

    def wait_for(self, topic, timeout=5.0) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(t == topic for t, _ in self.got), timeout)
            return [t for t, _ in self.got]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_provisioned_credentials_and_acl_are_enforced_by_mosquitto(board, tmp_path, capsys):
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    # an observer that may read everything (the gateway's role)
    pw.write_text(cmd_provision.password_line("observer", "observer-secret") + "\n")
    acl.write_text("user observer\ntopic readwrite m/#\n")
    rc, out, err = provision(capsys, board.port, "--node-id", "node-01",
                             "--broker", "127.0.0.1:1883", "--wifi-ssid", "meterlink-lab",
                             "--password-file", str(pw), "--acl-file", str(acl))
    assert rc == 0, err
    cfg = json.loads((board.flash / "config.json").read_text())
    user, password = cfg["broker"]["user"], cfg["broker"]["password"]
    assert user == "node-01" and len(password) == 24
    assert "password_file" in out and password not in out  # the secret never hits the screen
    assert acl.read_text().count("user node-01") == 1
    # what happened to each file, as it happened (field trial: "replaced" for a new entry)
    assert f"password_file {pw}: entry for node-01 added" in out, out
    assert f"acl_file {acl}: block for node-01 added" in out, out

    conf = f"password_file {pw}\nacl_file {acl}\n"
    with Mosquitto(tmp_path / "broker", extra_conf=conf, anonymous=False) as broker:
        obs = Client(broker.port, "observer", "observer-secret", "observer")
        assert obs.connect() == 0
        assert obs.subscribe("m/#") == [1]
        node = Client(broker.port, user, password, "node-01")
        assert node.connect() == 0  # the credentials written to the device work
        # another node's topics: Mosquitto drops the publish and delivers nothing from the
        # other node's downlink (Mosquitto 2.0 grants the SUBSCRIBE and filters on delivery)
        assert node.subscribe("m/node-02/c") in ([1], [0x80])
        assert node.subscribe("m/node-01/c") == [1]
        node.c.publish("m/node-02/r", b"forged", qos=1).wait_for_publish(5)
        node.c.publish("m/node-01/r", b"own", qos=1).wait_for_publish(5)
        seen = obs.wait_for("m/node-01/r")
        assert "m/node-02/r" not in seen  # it would have arrived before the later own publish
        obs.c.publish("m/node-02/c", b"for node-02", qos=1).wait_for_publish(5)
        obs.c.publish("m/node-01/c", b"for node-01", qos=1).wait_for_publish(5)
        assert node.wait_for("m/node-01/c") == ["m/node-01/c"]  # and not node-02's, sent before
        node.close()
        wrong = Client(broker.port, user, "not-the-password", "node-01b")
        assert wrong.connect() == 135  # CONNACK 5, not authorized (paho maps it to 135)
        wrong.close()

        # re-provisioning rotates the password; after a reload the old one is refused
        rc, out, err = provision(capsys, board.port, "--node-id", "node-01",
                                 "--password-file", str(pw), "--acl-file", str(acl))
        assert rc == 0, err
        cfg2 = json.loads((board.flash / "config.json").read_text())
        assert cfg2["broker"]["password"] != password
        assert cfg2["wifi"]["ssid"] == "meterlink-lab"  # the rest of the config is kept
        assert pw.read_text().count("node-01:") == 1 and "observer:" in pw.read_text()
        assert acl.read_text().count("user node-01") == 1
        assert f"password_file {pw}: entry for node-01 replaced" in out, out
        assert f"acl_file {acl}: block for node-01 replaced" in out, out
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        old = Client(broker.port, user, password, "node-01c")
        assert old.connect() == 135
        old.close()
        new = Client(broker.port, user, cfg2["broker"]["password"], "node-01d")
        assert new.connect() == 0
        new.close()
        obs.close()


def test_wifi_key_can_be_typed_instead_of_given_on_the_command_line(board, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("k3y with spaces\n"))
    rc, out, err = provision(capsys, board.port, "--node-id", "node-05", "--no-reset",
                             "--broker", "127.0.0.1:1883", "--wifi-ssid", "site",
                             "--wifi-password", "-")
    assert rc == 0, err
    cfg = json.loads((board.flash / "config.json").read_text())
    assert cfg["wifi"] == {"ssid": "site", "password": "k3y with spaces"}


def test_provision_says_it_created_the_broker_files_it_created(board, tmp_path, capsys):
    pw, acl = tmp_path / "new-passwd", tmp_path / "new-acl"
    rc, out, err = provision(capsys, board.port, "--node-id", "node-06", "--no-reset",
                             "--broker", "127.0.0.1:1883", "--password-file", str(pw),
                             "--acl-file", str(acl))
    assert rc == 0, err
    assert f"password_file {pw}: created, with the entry for node-06" in out, out
    assert f"acl_file {acl}: created, with the block for node-06" in out, out
    assert pw.read_text().startswith("node-06:") and "user node-06" in acl.read_text()


def test_invalid_config_is_refused_with_the_firmware_rules_and_nothing_is_written(board, capsys):
    rc, out, err = provision(capsys, board.port, "--node-id", "Bad Id",
                             "--broker", "127.0.0.1:1883", "--interval", "0")
    assert rc == 2
    assert "node_id must be 1-32 characters" in err
    assert "sensors[0].interval_s must be an integer 1-86400: got 0" in err
    assert not (board.flash / "config.json").exists()


def test_provision_registers_the_node_with_the_gateway(board, broker, tmp_path, capsys):
    gw = GatewayProcess(tmp_path / "gw", broker)
    try:
        deadline = time.monotonic() + 15
        while not (m := re.search(r"event=api_listening host=\S+ port=(\d+)", gw.log())):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{m.group(1)}"
        rc, out, err = provision(capsys, board.port, "--node-id", "park-01",
                                 "--broker", f"{broker.host}:{broker.port}", "--interval", "30",
                                 "--gateway", url, "--group", "park",
                                 "--location=-33.9249,18.4241", "--district", "Gardens",
                                 "--public", "--gateway-token-file", str(gw.dir / "api-token"))
        assert rc == 0, err
        assert f"registered park-01 with the gateway at {url}" in out
        status, row = gw.api("/api/nodes/park-01")
        assert status == 200, row
        assert row["board"] == BOARD and row["interval_s"] == 30 and row["group"] == "park"
        assert row["location"] == {"lat": -33.9249, "lon": 18.4241}
        assert row["district"] == "Gardens" and row["public"] is True
        # without the gateway's token the registration is refused, and says what to give
        rc, out, err = provision(capsys, board.port, "--node-id", "park-02",
                                 "--broker", f"{broker.host}:{broker.port}", "--gateway", url)
        assert rc == 1 and "wants its API token: pass --gateway-token-file" in err, err
        assert gw.api("/api/nodes/park-02")[0] == 404
    finally:
        gw.stop()


@pytest.mark.parametrize("words, message", [
    (["--location", "52.1", "--gateway", "http://127.0.0.1:9"],
     "--location must be LAT,LON in degrees, latitude -90..90 and longitude -180..180 "
     "(50.8466,4.3601): got '52.1'"),
    (["--location", "4.36,150.8,1", "--gateway", "http://127.0.0.1:9"],
     "got '4.36,150.8,1'"),
    (["--location=-91,4.3", "--gateway", "http://127.0.0.1:9"], "got '-91,4.3'"),
    (["--district", " ", "--gateway", "http://127.0.0.1:9"],
     "--district must be 1-64 characters: got ' '"),
    (["--location", "50.8,4.3", "--public"],
     "--location and --public need --gateway URL: they are registered with the gateway"),
])
def test_location_district_and_public_are_checked_before_the_node_is_touched(capsys, words,
                                                                             message):
    rc, out, err = provision(capsys, "/dev/null", "--node-id", "park-09", *words)
    assert rc == 2 and message in err, err


NODE_MQTT = """\
import asyncio, json, mqtt
cfg = json.load(open('config.json'))
b = cfg['broker']
async def go(password):
    c = mqtt.MQTTClient(cfg['node_id'], b['host'], b['port'], user=b['user'],
                        password=password, timeout_ms=3000)
    try:
        await c.connect()
    except Exception as e:
        print('refused', repr(e))
        return
    await c.publish('m/node-02/r', b'forged', 1)
    await c.publish('m/node-01/r', b'own', 1)
    await c.disconnect()
    print('published')
"""


def test_the_node_firmware_connects_with_its_new_credentials(board, tmp_path, capsys):
    """The firmware's own MQTT client (firmware/mqtt.py), run on the provisioned board with the
    config.json provision wrote: Mosquitto lets it in, drops what it publishes for another
    node, and refuses a wrong password."""
    from host_tools.device import Device

    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    pw.write_text(cmd_provision.password_line("observer", "observer-secret") + "\n")
    acl.write_text("user observer\ntopic readwrite m/#\n")
    with Mosquitto(tmp_path / "broker", extra_conf=f"password_file {pw}\nacl_file {acl}\n",
                   anonymous=False) as broker:
        assert cli.main(["deploy", "--board", BOARD, "--port", board.port, "--no-reset"]) == 0
        rc, out, err = provision(capsys, board.port, "--node-id", "node-01", "--no-reset",
                                 "--broker", f"127.0.0.1:{broker.port}",
                                 "--password-file", str(pw), "--acl-file", str(acl))
        assert rc == 0, err
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        obs = Client(broker.port, "observer", "observer-secret", "observer")
        assert obs.connect() == 0
        assert obs.subscribe("m/#") == [1]
        with Device(board.port, soft_reset=True) as dev:
            # the trimmed board file, as the firmware's Hardware reads it (the pulse driver
            # counts in the PCNT unit when the board has enough of them)
            assert dev.eval("__import__('sensors').Hardware(None).board_info()") == \
                {"name": BOARD, "chip": "esp32", "pcnt_units": 8}
            dev.exec(NODE_MQTT)
            assert dev.exec("asyncio.run(go(b['password']))", timeout=20).strip() == "published"
            seen = obs.wait_for("m/node-01/r")
            assert "m/node-02/r" not in seen
            out = dev.exec("asyncio.run(go('wrong'))", timeout=20).strip()
            assert out.startswith("refused"), out
        obs.close()


def test_provision_with_the_pki_gives_the_node_tls_and_its_own_certificate(tmp_path, capsys, pki):
    """`--pki --client-cert`: the node gets the fleet CA and its certificate, no password, and
    reaches the gateway through a broker that accepts only certified clients."""
    acl = tmp_path / "fleet.acl"
    acl.write_text(fleet_acl())
    with Mosquitto(tmp_path / "broker", tls=pki, require_certificate=True,
                   extra_conf=f"acl_file {acl}\n") as broker:
        gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
        try:
            with PtyBoard(tmp_path / "node") as b:  # a board flashed with the meterlink image
                assert cli.main(["deploy", "--board", BOARD, "--port", b.port]) == 0
                rc, out, err = provision(capsys, b.port, "--node-id", "pit-12", "--broker",
                                         f"{broker.host}:{broker.port}", "--pki", str(pki.root),
                                         "--client-cert", "--interval", "1",
                                         "--wifi-ssid", "meterlink-lab", "--wifi-password", "x")
                assert rc == 0, err
                assert "over TLS" in out and "its client certificate" in out, out
                assert "password_file" not in out  # the certificate is the credential
                cfg = json.loads((b.flash / "config.json").read_text())
                assert cfg["broker"]["tls"] == {"ca": "ca.der", "cert": "node.crt.der",
                                                "key": "node.key.der"}
                assert "password" not in cfg["broker"] and "user" not in cfg["broker"]
                assert (b.flash / "ca.der").read_bytes() == pki.ca_der.read_bytes()
                issued = pki.cert_path("node", "pit-12").with_suffix(".crt.der")
                assert (b.flash / "node.crt.der").read_bytes() == issued.read_bytes()
                wait_for(lambda: len({r["seq"] for r in gw.records() if r["node"] == "pit-12"})
                         >= 2, 60, "the provisioned node's readings at the gateway",
                         lambda: (b.root / "console.log").read_text(errors="replace")[-3000:])
        finally:
            gw.stop()
    rc, out, err = provision(capsys, "/dev/null", "--node-id", "x", "--client-cert")
    assert rc == 2 and "--client-cert and --server-name need --pki DIR" in err


def status_json(capsys, port) -> tuple[int, dict]:
    rc = cli.main(["status", "--port", port, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(out[-1]) if out else {}


def test_the_documented_steps_never_put_a_new_node_in_safe_mode(board, tmp_path, capsys):
    """Deploy, `status` a few times on a node that has no config yet (each soft-resets it:
    the node cannot start its runtime without a config), then provision: the node starts
    normally. A reset the technician's tools make is not a crash (field trial, issue 1)."""
    assert cli.main(["deploy", "--board", BOARD, "--port", board.port]) == 0
    for _ in range(4):
        cli.main(["status", "--port", board.port])
        time.sleep(1.5)  # the node boots to its REPL (no config) before the next command
    capsys.readouterr()
    with Mosquitto(tmp_path / "broker") as broker:
        rc, out, err = provision(capsys, board.port, "--node-id", "pit-11",
                                 "--broker", f"127.0.0.1:{broker.port}",
                                 "--wifi-ssid", "meterlink-lab")
        assert rc == 0, err
        time.sleep(1)
        rc, d = status_json(capsys, board.port)
        assert rc == 0 and "safe" not in d, d


def test_reboot_clears_a_crash_streak_and_the_node_leaves_safe_mode(board, tmp_path, capsys):
    """Real crashes put the node in safe mode: its sensor's bus hangs in every reading and the
    watchdog resets it, boot after boot. The technician fixes the wiring and runs `meterlink
    reboot`: the node starts normally, without a power cycle."""
    with Mosquitto(tmp_path / "broker") as broker:
        assert cli.main(["deploy", "--board", BOARD, "--port", board.port]) == 0
        rc, out, err = provision(capsys, board.port, "--node-id", "pit-12", "--no-reset",
                                 "--broker", f"127.0.0.1:{broker.port}",
                                 "--wifi-ssid", "meterlink-lab", "--interval", "1")
        assert rc == 0, err
        cfg = json.loads((board.flash / "config.json").read_text())
        cfg["watchdog_s"] = 2
        (board.flash / "config.json").write_text(json.dumps(cfg))
        (board.root / "env.json").write_text(json.dumps({"faults": {"i2c0": "hang"}}))
        cli.main(["reboot", "--port", board.port])
        capsys.readouterr()

        def in_safe_mode():
            rc, d = status_json(capsys, board.port)
            return d.get("safe")
        reason = wait_for(in_safe_mode, 120, "safe mode after watchdog resets", poll=2)
        assert "boots in a row crashed" in reason
        (board.root / "env.json").write_text("{}")  # the wiring fixed
        assert cli.main(["reboot", "--port", board.port]) == 0
        out = capsys.readouterr().out
        assert "crashed boot(s) was cleared: it starts normally (out of safe mode)" in out, out
        time.sleep(2)
        rc, d = status_json(capsys, board.port)
        assert rc == 0 and "safe" not in d, d


def test_status_says_connected_only_when_the_node_is(board, tmp_path, capsys):
    """`connected to the broker` is measured: False while the broker is not there, True once
    the node's MQTT session is up (field trial: it said True for a node that never reached
    its broker)."""
    from host_tools.broker import free_port

    port = free_port()
    assert cli.main(["deploy", "--board", BOARD, "--port", board.port, "--no-reset"]) == 0
    rc, out, err = provision(capsys, board.port, "--node-id", "pit-13",
                             "--broker", f"127.0.0.1:{port}", "--wifi-ssid", "meterlink-lab")
    assert rc == 0, err
    time.sleep(3)
    rc, d = status_json(capsys, board.port)
    assert rc == 0 and d["on"] is False, d
    with Mosquitto(tmp_path / "broker", port=port):
        def connected():
            rc, d = status_json(capsys, board.port)
            return d.get("on") is True
        wait_for(connected, 60, "the node's MQTT session", poll=2)


def test_a_modbus_sensor_gets_its_product_profile_from_the_library(tmp_path):
    library = json.loads(device.MODBUS_PROFILES.read_text())["profiles"]
    cfg = {"node_id": "gas-1", "broker": {"host": "192.0.2.1"},
           "uart": {"2": {"tx": 17, "rx": 16}},
           "sensors": [{"driver": "modbus", "uart": "uart2", "address": 3, "profile": "gas_lel",
                        "poll_s": 1, "alarm": {"channel": "methane", "above": 200,
                                               "kind": "gas"}},
                       {"driver": "modbus", "uart": "uart2", "address": 4, "profile": "own"}],
           "modbus_profiles": {"own": {"registers": [{"reg": 7, "channel": "water_level"}]}},
           "relay": {"pin": 26, "on": ["gas"]}}
    cmd_provision.add_modbus_profiles(cfg)
    assert cfg["modbus_profiles"] == {"own": {"registers": [{"reg": 7, "channel": "water_level"}]},
                                      "gas_lel": library["gas_lel"]}
    out = cmd_provision.validate(cfg)  # the firmware's own rules, in MicroPython
    assert [(r["reg"], r["channel"]) for r in out["sensors"][0]["registers"]] == \
        [(0, "methane"), (1, "alarms")]
    assert out["sensors"][1]["registers"][0]["reg"] == 7
    assert out["relay"] == [26, 16, 1]  # GPIO 26, the gas bit, high when on
    cfg["sensors"][1]["profile"] = "gas_xyz"  # in neither the library nor the config
    cmd_provision.add_modbus_profiles(cfg)
    with pytest.raises(UserError) as err:
        cmd_provision.validate(cfg)
    assert 'sensors[1].profile must name a profile of modbus_profiles (gas_lel, own): ' \
           'got "gas_xyz"' in str(err.value)
