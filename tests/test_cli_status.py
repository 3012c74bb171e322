"""`meterlink status`, `check` and `monitor` against the virtual board on a pty running the
real firmware (deployed with `meterlink deploy`)."""

from __future__ import annotations

import json
import re

import pytest

from host_tools import cli, cmd_check, cmd_monitor, device
from host_tools.vboard.pty_repl import PtyBoard

pytestmark = pytest.mark.slow
FW_VERSION = re.search(r'FIRMWARE_VERSION = "([^"]+)"',
                       (device.toolchain.FIRMWARE_DIR / "node.py").read_text()).group(1)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A virtual board with the firmware deployed and no config yet (the node stays at the
    REPL: what a technician finds after `meterlink deploy`)."""
    root = tmp_path_factory.mktemp("status") / "node"
    with PtyBoard(root) as b:
        assert b.wait_ready()
        assert cli.main(["deploy", "--board", "esp32-devkitc", "--port", b.port]) == 0
        yield b


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_status_prints_the_firmware_diagnostics(deployed, capsys):
    assert deployed.wait_ready()
    rc, out, err = run(capsys, "status", "--port", deployed.port)
    assert rc == 0, err
    assert re.search(rf"firmware version\s+{re.escape(FW_VERSION)}", out)
    assert re.search(r"boot count\s+\d+", out)
    rc, out, err = run(capsys, "status", "--port", deployed.port, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["fw"] == FW_VERSION and isinstance(d["boot"], int)


def test_check_reads_the_bme280_through_the_firmware_and_judges_plausibility(deployed, capsys):
    cfg = {"node_id": "pit-07", "broker": {"host": "127.0.0.1", "port": 1},
           "i2c": {"0": {"scl": 22, "sda": 21}},
           "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 0x76, "interval_s": 60}]}
    (deployed.flash / "config.json").write_text(json.dumps(cfg))
    (deployed.root / "env.json").write_text(json.dumps(
        {"temperature_c": 21.5, "humidity_pct": 45.0, "pressure_pa": 101325.0}))
    rc, out, err = run(capsys, "check", "--port", deployed.port)
    assert rc == 0, out + err
    assert "pit-07 on " in out and "1 sensor(s)" in out
    t = re.search(r"temperature (-?[\d.]+) Cel\s+ok", out)
    p = re.search(r"pressure (\d+) Pa\s+ok", out)
    assert t and abs(float(t.group(1)) - 21.5) < 0.1, out
    assert p and abs(int(p.group(1)) - 101325) < 50, out

    # a pressure no working BME280 reports on the ground: 20 kPa
    (deployed.root / "env.json").write_text(json.dumps(
        {"temperature_c": 21.5, "humidity_pct": 45.0, "pressure_pa": 20000.0}))
    rc, out, err = run(capsys, "check", "--port", deployed.port)
    assert rc == 1, out + err
    assert re.search(r"pressure 2\d{4} Pa\s+IMPLAUSIBLE: outside 30000\.\.110000 Pa",
                     out), out + err
    assert "1 check(s) failed" in err

    # the part does not answer on the bus
    (deployed.root / "env.json").write_text(json.dumps({"faults": {"i2c0:0x76": "absent"}}))
    rc, out, err = run(capsys, "check", "--port", deployed.port)
    assert rc == 1 and "FAILED" in out, out + err


def test_plausibility_rules():
    assert cmd_check.plausibility(3, 101325, None) == "ok"
    assert cmd_check.plausibility(3, 29999, None).startswith("IMPLAUSIBLE")
    assert cmd_check.plausibility(1, 2153, None) == "ok"
    assert cmd_check.plausibility(1, 9000, None).startswith("IMPLAUSIBLE")  # 90 Cel
    assert cmd_check.plausibility(4, 1200, {4: 1199}) == "ok"  # water total, litres
    assert "went down from 1200 to 1150" in cmd_check.plausibility(4, 1150, {4: 1200})


def test_monitor_timestamps_lines_and_highlights_errors(tmp_path, capsys):
    b = PtyBoard(tmp_path / "node")
    # the node's own log module (firmware/log.py) prints the lines, from main.py at boot
    (b.flash / "log.py").write_text((device.toolchain.FIRMWARE_DIR / "log.py").read_text())
    (b.flash / "main.py").write_text(
        "import log, time\n"
        "while True:\n"
        "    log.info('sensor', 'bme280@i2c0:0x76 seq=%d', 1)\n"
        "    log.error('mqtt', 'connect failed (%r)', OSError(113))\n"
        "    time.sleep_ms(100)\n")
    with b:
        rc = cli.main(["monitor", "--port", b.port, "--duration", "1.5", "--color", "always",
                       "--log", str(tmp_path / "mon.log")])
    out, err = capsys.readouterr()
    assert rc == 0
    info = [ln for ln in out.splitlines() if "I sensor: bme280@i2c0:0x76 seq=1" in ln]
    errors = [ln for ln in out.splitlines() if "E mqtt: connect failed" in ln]
    assert info and errors
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3}  \d+ I sensor", info[0])
    assert errors[0].startswith(cmd_monitor.RED) and errors[0].endswith(cmd_monitor.RESET)
    assert not info[0].startswith("\x1b")
    assert re.search(r"monitor: [1-9]\d* error line\(s\)", err)
    assert "E mqtt: connect failed" in (tmp_path / "mon.log").read_text()


def test_status_table_names_every_key_and_decodes_last_readings():
    from host_tools.cmd_status import format_table

    d = {"fw": "0.3.0", "boot": 4, "rst": "power", "up": 3600, "q": 2, "qd": 0, "seq": 120,
         "heap": 31200, "rssi": -67, "err": {"bme280@i2c0:0x76": 3}, "new_key": 7,
         "last": {"bme280@i2c0:0x76": {1: 2153, 2: 4523, 3: 101325},
                  "pulse@pcnt0": {4: 123456, 65: -512}}}
    lines = format_table(d)
    text = "\n".join(lines)
    assert re.search(r"firmware version\s+0\.3\.0", text)
    assert re.search(r"readings queued on flash\s+2", text)
    assert re.search(r"failed readings per sensor since boot\s+bme280@i2c0:0x76: 3", text)
    assert re.search(r"new_key\s+7", text)  # a key this table does not know yet still shows
    assert re.search(r"last bme280@i2c0:0x76\s+temperature 21\.53 Cel  humidity 45\.23 %RH  "
                     r"pressure 101325 Pa$", text, re.M)
    assert re.search(r"last pulse@pcnt0\s+water_volume 123\.456 m3  temperature:1 -5\.12 Cel$",
                     text, re.M)
    assert re.search(r"Wi-Fi RSSI \(dBm\)\s+-67", text)
