"""`meterlink simulate` and `meterlink vboard` (the commands that run virtual boards for demos,
load tests and technicians without hardware), and `check`'s confirmation at the real gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest

from host_tools import cli, cmd_check
from gateway_support import GatewayProcess

pytestmark = pytest.mark.slow
MELINK = str(Path(sys.executable).with_name("meterlink"))
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def processes_in(folder: Path) -> list[int]:
    """Pids of the processes whose working directory is under `folder`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(Path(os.readlink(proc / "cwd"))).startswith(str(folder)):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_simulate_runs_n_distinct_nodes_on_the_broker_and_stops_them_all(broker, tmp_path,
                                                                         capsys):
    rc = cli.main(["simulate", "--nodes", "3", "--broker", f"{broker.host}:{broker.port}",
                   "--interval", "5", "--dir", str(tmp_path / "sim"), "--duration", "2",
                   "--pki", str(broker.tls.root)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"3 virtual node(s) running against {broker.host}:{broker.port}" in out
    ids = [f"sim-00{i}" for i in (1, 2, 3)]
    envs = set()
    for nid in ids:
        node = tmp_path / "sim" / nid
        cfg = json.loads((node / "flash" / "config.json").read_text())
        assert cfg["node_id"] == nid and cfg["broker"]["port"] == broker.port
        assert cfg["sensors"][0]["interval_s"] == 5
        envs.add((node / "env.json").read_text())
        assert (node / "console.log").stat().st_size > 0  # the firmware ran and printed
        assert f"  {nid}: " in out  # the summary line
    assert len(envs) == 3  # each node measures its own weather
    assert not processes_in(tmp_path / "sim")  # every node stopped


def test_simulate_rejects_a_bad_broker_address(capsys):
    rc = cli.main(["simulate", "--nodes", "1", "--broker", "localhost"])
    assert rc == 2
    assert "--broker must be HOST:PORT" in capsys.readouterr().err


def test_vboard_prints_a_port_that_mpremote_can_use(tmp_path):
    proc = subprocess.Popen([MELINK, "vboard", "--dir", str(tmp_path / "vb"), "--chip",
                             "esp32s3", "--duration", "30"], stdout=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/pts/")
        done = subprocess.run([MPREMOTE, "connect", port, "exec",
                               "import machine; print(machine.vboard().chip)"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "esp32s3"
        assert (tmp_path / "vb" / "flash").is_dir()
    finally:
        proc.terminate()
        proc.wait(10)


def test_check_confirms_the_reading_at_the_real_gateway(broker, tmp_path):
    """`check --gateway`: the read command goes through the gateway's API, the node's ack
    names the sequence number, and check waits until the gateway's registry has it. The
    node's MQTT side is a client speaking docs/wire-format.md (command, ack, reading)."""
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = broker.secure(paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pit-09"))
    seen = []

    def on_message(c, u, msg):
        req = cbor2.loads(msg.payload)
        seen.append(req)
        seq = 41
        c.publish("m/pit-09/r", cbor2.dumps([1, seq, int(time.time()), {1: 2153, 3: 101325}]),
                  qos=1)
        c.publish("m/pit-09/a", cbor2.dumps({"id": req["id"], "cmd": "read", "ok": True,
                                              "seq": seq}), qos=1)

    node.on_message = on_message
    try:
        deadline = time.monotonic() + 15
        while not (m := re.search(r"event=api_listening host=\S+ port=(\d+)", gw.log())):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{m.group(1)}"
        node.connect(broker.host, broker.port)
        node.subscribe("m/pit-09/k", qos=1)
        node.loop_start()
        time.sleep(0.3)
        assert cmd_check.confirm_gateway(url, "pit-09", timeout=30, token=gw.token) == 41
        assert seen and seen[0]["cmd"] == "read"
    finally:
        node.loop_stop()
        gw.stop()
