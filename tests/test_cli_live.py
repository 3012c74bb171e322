"""`meterlink status`, `check` and `simulate` against running nodes: the real firmware started
by main.py on the virtual board's pty (or by `simulate`), a real Mosquitto and the real
gateway with its SQLite store and HTTP API."""

from __future__ import annotations

import json
import re

import pytest

from host_tools import cli, cmd_status
from host_tools.broker import Mosquitto
from host_tools.firmware_build import image_files
from host_tools.pki import Pki
from host_tools.vboard.node import default_config
from host_tools.vboard.pty_repl import PtyBoard
from gateway_support import GatewayProcess, wait_for

pytestmark = pytest.mark.slow
NODE = "pit-31"
ENV = {"temperature_c": 17.25, "humidity_pct": 63.5, "pressure_pa": 99870.0}


def console(board: PtyBoard) -> str:
    return (board.root / "console.log").read_bytes().decode(errors="replace")


def acked_seqs(text: str) -> set[int]:
    """Sequence numbers the node's log says the broker acknowledged (`seq=A..B acked`)."""
    out = set()
    for a, b in re.findall(r"seq=(\d+)\.\.(\d+) acked", text):
        out.update(range(int(a), int(b) + 1))
    return out


def node_row(gw: GatewayProcess, node: str) -> dict:
    status, row = gw.api(f"/api/nodes/{node}")
    return row if status == 200 else {}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A TLS broker, the gateway, and a node running its firmware from main.py on a pty board
    with the meterlink image (boot.py and main.py copied as `meterlink deploy` leaves them,
    the CA as `meterlink provision` leaves it)."""
    root = tmp_path_factory.mktemp("live")
    pki = Pki(root / "pki")
    pki.init("live test fleet")
    with Mosquitto(root / "broker", tls=pki) as broker:
        gw = GatewayProcess(root / "gw", broker).wait_subscribed()
        board = PtyBoard(root / "node")
        for name, data in {**image_files(), **broker.node_files(NODE)}.items():
            (board.flash / name).write_bytes(data)
        (board.flash / "config.json").write_text(json.dumps(
            default_config(NODE, broker.host, broker.port, interval_s=1,
                           tls=broker.node_tls(NODE))))
        (board.root / "env.json").write_text(json.dumps(ENV))
        try:
            with board:
                wait_for(lambda: acked_seqs(console(board)), 20, "the node's first reading")
                wait_for(lambda: gw.counters().get("api_port"), 20, "the gateway's API")
                yield broker, gw, board
        finally:
            gw.stop()


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_status_shows_the_running_node_live_and_resumes_it_without_a_reboot(site, capsys):
    broker, gw, board = site
    boots = (board.flash / "boots.dat").read_text().strip()
    # the broker goes away: readings wait in the node's flash queue
    broker.stop()
    mark = len(console(board))
    wait_for(lambda: len(re.findall(r"queued seq=\d+", console(board)[mark:])) >= 2, 10,
             "readings queued while the broker is down")

    rc, out, err = run(capsys, "status", "--port", board.port)
    assert rc == 0, err
    seen = console(board)  # the node is running again, but what it did before status counts
    table = {m.group(1): m.group(2) for m in re.finditer(r"^  (\S.*?\S)\s{2,}(.*)$", out, re.M)}
    seq_next = int(table["next sequence number"])
    queued = int(table["readings queued on flash"])
    last_acked = max(acked_seqs(seen[:seen.rindex("raw REPL")]))
    assert queued >= 2 and queued == seq_next - (last_acked + 1), out
    assert table["boot count"] == boots
    t, h, p = re.match(r"temperature (\S+) Cel  humidity (\S+) %RH  pressure (\d+) Pa$",
                       table["last bme280@i2c0:0x76"]).groups()
    assert abs(float(t) - 17.25) < 0.02 and abs(float(h) - 63.5) < 0.1 and \
        abs(int(p) - 99870) < 5, out
    assert cmd_status.RESUMED in err

    # resumed, not rebooted: same boot, the queue goes out, and the gateway has every reading
    broker.start()
    wait_for(lambda: set(range(1, seq_next)) <= acked_seqs(console(board)), 20,
             "the queued readings acknowledged after the resume")
    assert (board.flash / "boots.dat").read_text().strip() == boots
    row = wait_for(lambda: (r := node_row(gw, NODE)).get("max_seq", -1) >= seq_next - 1 and r,
                   20, "the gateway to store the queued readings")
    assert row["missing"] == 0 and row["gaps"] == []

    # again, as JSON, with the broker back: a live and growing sequence, the same boot
    rc, out, err = run(capsys, "status", "--port", board.port, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["on"] is True and d["boot"] == int(boots) and d["seq"] > seq_next
    assert cmd_status.RESUMED in err


def test_check_reads_the_running_node_and_the_real_gateway_stores_its_test_reading(site,
                                                                                    capsys):
    broker, gw, board = site
    wait_for(lambda: node_row(gw, NODE).get("max_seq") is not None, 20, "a first reading")
    boots = (board.flash / "boots.dat").read_text().strip()
    url = f"http://127.0.0.1:{gw.counters()['api_port']}"
    rc, out, err = run(capsys, "check", "--port", board.port, "--gateway", url,
                       "--gateway-token-file", str(gw.dir / "api-token"), "--timeout", "30")
    assert rc == 0, out + err
    assert f"{NODE} on {board.port}: 1 sensor(s)" in out
    assert re.search(r"temperature 17\.2\d Cel\s+ok", out), out
    assert re.search(r"pressure 998[67]\d Pa\s+ok", out), out
    seq = int(re.search(rf"received reading seq=(\d+) from {NODE}", out).group(1))
    # the gateway's own store has it: its registry and the record in its sink
    assert node_row(gw, NODE)["max_seq"] >= seq
    wait_for(lambda: (NODE, seq) in gw.readings(), 10, "the test reading in the gateway's sink")
    # the node was resumed, not rebooted, and keeps sending
    assert (board.flash / "boots.dat").read_text().strip() == boots
    wait_for(lambda: max(acked_seqs(console(board))) > seq, 10, "readings after the check")


def test_simulate_delivers_every_node_s_readings_to_the_real_gateway(site, tmp_path, capsys):
    broker, gw, _ = site
    rc = cli.main(["simulate", "--nodes", "3", "--broker", f"{broker.host}:{broker.port}",
                   "--interval", "1", "--dir", str(tmp_path / "sim"), "--prefix-id", "simgw",
                   "--duration", "5", "--pki", str(broker.tls.root)])
    assert rc == 0
    capsys.readouterr()
    for i in (1, 2, 3):
        nid = f"simgw-00{i}"
        text = (tmp_path / "sim" / nid / "console.log").read_bytes().decode(errors="replace")
        acked = acked_seqs(text)
        assert len(acked) >= 2, text[-2000:]
        # every reading the broker acknowledged to the node is in the gateway's store
        wait_for(lambda: acked <= {s for n, s in gw.readings() if n == nid}, 15,
                 f"{nid}'s acknowledged readings at the gateway")
        row = node_row(gw, nid)
        assert row["max_seq"] >= max(acked) and row["missing"] == 0
