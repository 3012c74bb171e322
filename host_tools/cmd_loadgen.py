"""`meterlink loadgen`: the readings of N simulated meters on a broker, in the real wire format
and on the firmware's schedule, for load tests and the fleet benches.

    meterlink loadgen --nodes 10000 --broker 127.0.0.1:1883 [--interval 3600]
                      [--spread S | --no-spread] [--per-connection 500] [--duration S]
                      [--prefix lg] [--pki DIR] [--user U --password P]

Each simulated node is a water meter: a reading on every wall-clock multiple of the interval
(`[1, seq, t, {water_volume: litres, battery_voltage: mV}]`, docs/wire-format.md), sent at its
slot in the interval as the firmware sends it (firmware/clock.py `send_offset` and
`send_slot`, the very functions the nodes run; `--spread` is the config's send.spread_s,
by default the interval, at most an hour; `--no-spread` sends each reading when it is taken:
the fleet as it was before the spread). Many nodes share one MQTT connection (`--per-connection`,
QoS 1, publishing on each node's own topic `m/<id>/r`), so thousands of nodes cost a handful of
sockets; node ids are `<prefix>-000001`, ... Sequence numbers start at the current Unix time,
so a second run is not taken for repeats of the first.

Every 10 s a line shows the messages published and acknowledged; at the end, the totals.
"""

from __future__ import annotations

import argparse
import importlib.util
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from host_tools import toolchain
from host_tools.device import say
from host_tools.options import parse_broker
from meterlink_common import EXIT_INPUT, UserError

HELP = "publish the readings of N simulated meters on the firmware's schedule"
WATER_VOLUME, BATTERY_VOLTAGE = 4, 7  # channel ids (gateway/channels.json)
MAX_SPREAD_S = 3600  # the firmware's cap on send.spread_s


def firmware_clock():
    """firmware/clock.py, loaded as a module of its own: its slot functions are plain Python."""
    spec = importlib.util.spec_from_file_location("meterlink_node_clock",
                                                  toolchain.ROOT / "firmware" / "clock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1000, metavar="N")
    parser.add_argument("--broker", required=True, metavar="HOST:PORT")
    parser.add_argument("--interval", type=int, default=3600, metavar="S",
                        help="reading interval of each node (default: 3600)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--spread", type=int, metavar="S",
                     help="send.spread_s of the nodes (default: the interval, at most 3600)")
    how.add_argument("--no-spread", action="store_true",
                     help="send each reading when taken (send.spread_s 0)")
    parser.add_argument("--per-connection", type=int, default=500, metavar="K",
                        help="simulated nodes per MQTT connection (default: 500)")
    parser.add_argument("--duration", type=float, default=0, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C)")
    parser.add_argument("--prefix", default="lg", help="node ids are PREFIX-000001, ...")
    parser.add_argument("--pki", type=Path, metavar="DIR",
                        help="TLS to the broker, trusting this `meterlink pki` folder's CA")
    parser.add_argument("--user", help="MQTT user of every connection")
    parser.add_argument("--password", help="MQTT password")


class Fleet:
    """N simulated meters over K-node connections, each reading sent at its send slot."""

    def __init__(self, host: str, port: int, *, nodes: int, interval_s: int, spread_s: int,
                 per_connection: int = 500, prefix: str = "lg", tls_ca: str | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        clock = firmware_clock()
        self.interval = interval_s
        self.ids = [f"{prefix}-{i:06d}" for i in range(1, nodes + 1)]
        self.offset = {n: clock.send_offset(n, spread_s) for n in self.ids}
        self.slot = clock.send_slot
        self.published = self.acked = 0
        self.lock = threading.Lock()
        self.clients: list[mqtt.Client] = []
        self.client_of: dict[str, mqtt.Client] = {}
        for c in range(0, nodes, per_connection):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-conn-{c:06d}",
                                 protocol=mqtt.MQTTv311)
            client.max_queued_messages_set(0)
            client.max_inflight_messages_set(1000)
            if tls_ca:
                client.tls_set(ca_certs=tls_ca)
            if user:
                client.username_pw_set(user, password or "")
            client.on_publish = self._on_publish
            client.connect(host, port, keepalive=60)
            client.loop_start()
            self.clients.append(client)
            for n in self.ids[c:c + per_connection]:
                self.client_of[n] = client
        self.seq0 = int(time.time())
        self.total = {n: 1000 * (i + 1) for i, n in enumerate(self.ids)}

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        with self.lock:
            self.acked += 1

    def schedule(self, t: int) -> list[tuple[int, str]]:
        """(send at, node) of the readings taken at Unix second `t` (a multiple of the
        interval), by send time: all inside the interval, since an offset is below the
        spread and the spread at most the interval."""
        return sorted((self.slot(t, self.interval, self.offset[n]), n) for n in self.ids)

    def send(self, node: str, t: int) -> None:
        seq = self.seq0 + t // self.interval
        self.total[node] += 7  # litres since the previous reading
        payload = cbor2.dumps([1, seq, t, {WATER_VOLUME: self.total[node], BATTERY_VOLTAGE: 3600}])
        self.client_of[node].publish(f"m/{node}/r", payload, qos=1)
        self.published += 1

    def run(self, duration: float, report=None, stop=lambda: False) -> None:
        """Takes the readings of the next `duration` seconds, from the next interval boundary
        on, and sends each at its slot."""
        start = time.time()
        t = int(start) - int(start) % self.interval + self.interval
        next_report = start + 10
        while t < start + duration and not stop():
            for send_at, node in self.schedule(t):
                while True:
                    now = time.time()
                    if report and now >= next_report:
                        next_report += 10
                        report(now - start)
                    if send_at <= now or stop():
                        break
                    time.sleep(min(send_at - now, 0.05))
                self.send(node, t)
            t += self.interval

    def drain(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while self.acked < self.published and time.time() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 1_000_000:
        raise UserError(f"--nodes must be 1-1000000: got {args.nodes}", exit_code=EXIT_INPUT)
    if not 1 <= args.interval <= 86400:
        raise UserError(f"--interval must be 1-86400 s: got {args.interval}", exit_code=EXIT_INPUT)
    if args.spread is not None and not 0 <= args.spread <= MAX_SPREAD_S:
        raise UserError(f"--spread must be 0-{MAX_SPREAD_S} s: got {args.spread}",
                        exit_code=EXIT_INPUT)
    host, port = parse_broker(args.broker)
    spread = 0 if args.no_spread else min(args.interval, MAX_SPREAD_S if args.spread is None
                                          else args.spread)
    ca = None
    if args.pki:
        from host_tools.pki import Pki

        ca = str(Pki(args.pki).ca_crt)
    fleet = Fleet(host, port, nodes=args.nodes, interval_s=args.interval, spread_s=spread,
                  per_connection=args.per_connection, prefix=args.prefix, tls_ca=ca,
                  user=args.user, password=args.password)
    say(f"{args.nodes} simulated meters on {len(fleet.clients)} connection(s) to {host}:{port}: "
        f"a reading every {args.interval} s, sent over the first {spread} s of the interval")
    try:
        fleet.run(args.duration or 10 * 365 * 86400,
                  report=lambda s: say(f"{s:6.0f} s  {fleet.published} published, "
                                       f"{fleet.acked} acknowledged"))
        fleet.drain()
    finally:
        fleet.close()
    say(f"done: {fleet.published} readings published, {fleet.acked} acknowledged")
    return 0
