"""A NATS Server cluster for the clustered deployment (docs/gateway.md, "Past one machine"):
the configs `meterlink nats-config` writes for production, and a local cluster on loopback
ports for tests and benches, started from Debian's `nats-server` (2.9).

    cluster = NatsCluster(tmp / "nats", size=3).start()   # three servers, JetStream R3, MQTT
    cluster.mqtt[0]            # (host, port) of server 1's MQTT listener: nodes connect there
    cluster.urls               # nats://... of every server: the gateway's JetStream client
    cluster.kill(1); cluster.start_server(1)               # kill -9 one server, bring it back
    cluster.partition(2); cluster.heal()                   # cut server 3's routes, restore them
    cluster.stream_leader("READINGS")                      # index of the server leading it
    cluster.stop()

Who may do what (`authorization`): the gateway's user (`GATEWAY_USER`, with the password the
cluster or `meterlink nats-config` made) may do everything, on the NATS port and on MQTT (its
`[mqtt]` link); an MQTT client without a user name (a node: its certificate is what the MQTT
listener verifies, with `--tls-*`) is `NODE_USER`, which may publish only a node's `r`, `s` and
`a` topics and subscribe only to `c` and `k` (and `$MQTT.sub.>`, where NATS delivers QoS 1
subscriptions), so no node can publish a downlink, a gateway instance's summary or a
JetStream API request (`$JS/API/...`). `NODE_USER` has no password, so it may connect over MQTT
only (`allowed_connection_types`), never on the NATS port.

With the fleet's certificates (`identities`: `meterlink nats-config --pki`, or a cluster made
with `pki`) each certificate is a user of its own (`verify_and_map` on the MQTT listener: the
user named `CN=<name>`): a node's may publish only its own `r`, `s` and `a` and subscribe only
to its own `c` and `k`, as Mosquitto's ACL keeps it; a gateway instance's may do everything;
a certificate of anyone else (a node issued after the configs were written, or revoked
before) is refused. NATS 2.9 reads no CRL: writing the configs again after `meterlink pki
revoke`, and reloading the servers, is how a node is shut out. These users, too, connect
over MQTT only.

Each server: client port, cluster routes to the others, JetStream with its own store, an MQTT
listener (MQTT 3.1.1 for the nodes; their sessions and QoS 1 messages live in JetStream,
replicated), the monitoring port for health (`/healthz`). The readings
stream (`READINGS`, subjects `m.*.r`: what an MQTT publish to `m/<node>/r` becomes, three
replicas, work-queue retention: a message leaves once a gateway acknowledged it) is created by
the gateway's JetStream source at start (gateway/jetstream.py `ensure_stream`).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from host_tools.broker import free_port
from host_tools.process import stop as stop_process

CLUSTER = "meterlink"
GATEWAY_USER = "meterlink-gateway"
NODE_USER = "meterlink-node"


def nats_server() -> str:
    path = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(path).exists():
        raise RuntimeError("nats-server is not installed (Debian package nats-server; "
                           "`make setup` installs it)")
    return path


def server_config(name: str, *, host: str, client_port: int, cluster_port: int,
                  mqtt_port: int, http_port: int, routes: list[str], store_dir: str,
                  gateway_password: str, prefix: str = "m", max_file_store: str = "10G",
                  tls: tuple[str, str, str] | None = None,
                  identities: tuple[Sequence[str], Sequence[str]] | None = None) -> str:
    """One server's config (NATS config syntax; strings JSON-quoted). `tls`: (certificate,
    key, CA) files for the MQTT listener, which then verifies the nodes' certificates.
    `gateway_password`: `GATEWAY_USER`'s; `prefix`: the nodes' topic prefix ([mqtt] prefix).
    `identities`: (gateway instances, nodes), the names (CN) of their certificates: each is
    then a user of its own (module docstring); it needs `tls`."""
    q = json.dumps
    if identities is not None and tls is None:
        raise ValueError("identities need tls: the MQTT listener maps certificates to users")
    users = [f"    {{user: {q(GATEWAY_USER)}, password: {q(gateway_password)}}}"]
    if identities is None:
        users.append(_node_user(NODE_USER, "*", prefix))
    else:
        gateways, nodes = identities
        users += [f"    {{user: {q(f'CN={name}')}, {MQTT_ONLY}}}" for name in gateways]
        users += [_node_user(f"CN={name}", name, prefix) for name in nodes]
    lines = [
        "authorization {",
        "  users: [",
        *users,
        "  ]",
        "}",
        f"server_name: {q(name)}",
        f"listen: {q(f'{host}:{client_port}')}",
        f"http: {q(f'{host}:{http_port}')}",
        "jetstream {",
        f"  store_dir: {q(store_dir)}",
        f"  max_file_store: {max_file_store}",
        "}",
        "cluster {",
        f"  name: {q(CLUSTER)}",
        f"  listen: {q(f'{host}:{cluster_port}')}",
        "  routes: [" + ", ".join(q(r) for r in routes) + "]",
        "}",
        "mqtt {",
        f"  listen: {q(f'{host}:{mqtt_port}')}",
        *(["  # a client that gives no user name (a node) has the node user's permissions",
           f"  no_auth_user: {q(NODE_USER)}"] if identities is None else []),
        "  # the MQTT sessions, retained messages and QoS 1 deliveries on every server: losing",
        "  # one leaves a quorum (the automatic choice can be fewer while servers join)",
        f"  stream_replicas: {min(3, len(routes) + 1)}",
        f"  consumer_replicas: {min(3, len(routes) + 1)}",
        *([f"  tls {{ cert_file: {q(tls[0])}, key_file: {q(tls[1])}, ca_file: {q(tls[2])}, "
           + ("verify_and_map: true }" if identities is not None else "verify: true }")]
          if tls else []),
        "  # QoS 1 messages to a subscriber are redelivered after ack_wait without a PUBACK",
        "  ack_wait: \"30s\"",
        "}",
    ]
    return "\n".join(lines) + "\n"


MQTT_ONLY = 'allowed_connection_types: ["MQTT"]'  # a user without a password: not on the NATS port


def _node_user(user: str, node: str, prefix: str) -> str:
    """The users entry of a node (`node` "*": any node), over MQTT only: it may publish its
    `r`, `s` and `a` topics and subscribe to its `c` and `k` (and `$MQTT.sub.>`, where NATS
    delivers QoS 1 subscriptions)."""
    q = json.dumps
    pub = [f"{prefix}.{node}.{kind}" for kind in "rsa"]
    sub = [f"{prefix}.{node}.{kind}" for kind in "ck"] + ["$MQTT.sub.>"]
    return (f"    {{user: {q(user)}, {MQTT_ONLY}, permissions: {{publish: {{allow: {q(pub)}}}, "
            f"subscribe: {{allow: {q(sub)}}}}}}}")


def pki_identities(pki, gateways: Sequence[str]) -> tuple[list[str], list[str]]:
    """`server_config`'s `identities` from the fleet's CA (a `host_tools.pki.Pki`): the
    names among `gateways` with a live client certificate, and every node with a live one."""
    live = [e for e in pki.index() if not e["revoked"]]
    return ([e["name"] for e in live if e["kind"] == "client" and e["name"] in gateways],
            [e["name"] for e in live if e["kind"] == "node"])


class NatsCluster:
    """`size` nats-server processes on free loopback ports, clustered, in `workdir`. With
    `pki` (a `host_tools.pki.Pki`), the MQTT listeners speak TLS with a certificate of that
    CA and map each client certificate to its user: its nodes' and the `gateways` named
    (module docstring); `reload()` takes the certificates issued or revoked since."""

    def __init__(self, workdir: str | Path, size: int = 3, host: str = "127.0.0.1", *,
                 pki=None, gateways: Sequence[str] = ()) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.host = host
        self.pki = pki
        self.gateways = tuple(gateways)
        self.tls: tuple[str, str, str] | None = None
        if pki is not None:
            name = "nats-loopback"
            if not any(e["kind"] == "broker" and e["name"] == name and not e["revoked"]
                       for e in pki.index()):
                pki.issue("broker", name, hosts=["localhost"], ips=[host])
            self.tls = (str(pki.cert_path("broker", name)), str(pki.key_path("broker", name)),
                        str(pki.ca_crt))
        self._pick_ports()
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.gateway_user = GATEWAY_USER
        self.gateway_password = secrets.token_urlsafe(18)
        self._write_configs(cut=None)

    def _write_configs(self, cut: int | None) -> None:
        """Every server's config; with `cut`, that server has no routes and no other server
        has a route to it."""
        for i in range(self.size):
            routes = [f"nats-route://{self.host}:{p}" for j, p in enumerate(self.cluster_ports)
                      if j != i and cut not in (i, j)]
            self.conf(i).write_text(server_config(
                f"ml-{i + 1}", host=self.host, client_port=self.client_ports[i],
                cluster_port=self.cluster_ports[i], mqtt_port=self.mqtt_ports[i],
                http_port=self.http_ports[i], routes=routes,
                store_dir=str(self.dir / f"js-{i + 1}"),
                gateway_password=self.gateway_password, tls=self.tls,
                identities=self.identities()))

    def identities(self) -> tuple[list[str], list[str]] | None:
        """(gateway instances, nodes) with a live certificate of the cluster's `pki`."""
        return None if self.pki is None else pki_identities(self.pki, self.gateways)

    def reload(self) -> None:
        """Writes the configs again (the certificates issued or revoked since) and has every
        server read its own (SIGHUP), as an operator does after `meterlink nats-config`."""
        self._write_configs(cut=None)
        self._reload()

    def _reload(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGHUP)  # nats-server reloads its config, routes included

    def routes(self, i: int) -> int:
        """The route connections server i has now (its /routez)."""
        url = f"http://{self.host}:{self.http_ports[i]}/routez"
        with urllib.request.urlopen(url, timeout=2) as reply:
            return len(json.load(reply).get("routes") or [])

    def stream_leader(self, stream: str, timeout: float = 30.0,
                      consumer: str | None = None) -> int:
        """The index of the server leading `stream` now (its JetStream stream info), or with
        `consumer`, leading that durable consumer of it."""
        import asyncio

        import nats

        async def ask() -> str | None:
            for url in self.urls:
                try:
                    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0,
                                            allow_reconnect=False, **self.credentials)
                except Exception:  # noqa: BLE001 - that server is down: ask the next one
                    continue
                try:
                    js = nc.jetstream()
                    info = await (js.consumer_info(stream, consumer) if consumer else
                                  js.stream_info(stream))
                    return info.cluster.leader if info.cluster else None
                except Exception:  # noqa: BLE001 - no leader yet
                    continue
                finally:
                    await nc.close()
            return None

        deadline = time.monotonic() + timeout
        while True:
            name = asyncio.run(ask())
            if name:
                return int(name.rsplit("-", 1)[1]) - 1  # "ml-2" -> 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {stream} has no leader after {timeout:.0f} s")
            time.sleep(0.2)

    def partition(self, i: int, timeout: float = 15.0) -> None:
        """Cuts server i away from the others, as a network partition would: the configs
        lose every route to and from it and are reloaded (SIGHUP); returns when server i has
        no route left. Its clients stay connected to it; it has no JetStream quorum."""
        self._write_configs(cut=i)
        self._reload()
        deadline = time.monotonic() + timeout
        while self.routes(i):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {i + 1} still has routes after {timeout:.0f} s")
            time.sleep(0.2)

    def heal(self, timeout: float = 60.0) -> None:
        """Restores every route and waits until each server has all of them (the cut server's
        replicas catch up after that: its /healthz can stay failing for a minute under load,
        "stream ... is not current", while the cluster serves again)."""
        self._write_configs(cut=None)
        self._reload()
        deadline = time.monotonic() + timeout
        while not all(self.routes(i) >= self.size - 1 for i in range(self.size)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster's routes are not back after {timeout:.0f} s")
            time.sleep(0.2)

    def conf(self, i: int) -> Path:
        return self.dir / f"server-{i + 1}.conf"

    @property
    def credentials(self) -> dict[str, str]:
        """The gateway user's, as `nats.connect` takes them."""
        return {"user": self.gateway_user, "password": self.gateway_password}

    @property
    def urls(self) -> list[str]:
        return [f"nats://{self.host}:{p}" for p in self.client_ports]

    @property
    def mqtt(self) -> list[tuple[str, int]]:
        return [(self.host, p) for p in self.mqtt_ports]

    def start_server(self, i: int) -> None:
        log = open(self.dir / f"server-{i + 1}.log", "ab")
        self.procs[i] = subprocess.Popen([nats_server(), "-c", str(self.conf(i))],
                                         stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _pick_ports(self) -> None:
        self.client_ports = [free_port() for _ in range(self.size)]
        self.cluster_ports = [free_port() for _ in range(self.size)]
        self.mqtt_ports = [free_port() for _ in range(self.size)]
        self.http_ports = [free_port() for _ in range(self.size)]

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        """Starts every server. A free port another process took between `free_port` and
        the server's bind (tests run side by side) costs a new set of ports, up to 3 times."""
        for attempt in range(3):
            for i in range(self.size):
                self.start_server(i)
            try:
                self.wait_healthy(timeout)
                return self
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
            self.stop()
            self._pick_ports()
            self._write_configs(cut=None)
        return self

    def healthy(self, i: int) -> bool:
        """Server i serves JetStream: /healthz is 200 once its meta group has a leader and the
        server is current with it."""
        url = f"http://{self.host}:{self.http_ports[i]}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 30.0, servers: list[int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        want = range(self.size) if servers is None else servers
        while not all(self.healthy(i) for i in want):
            for i in want:
                p = self.procs[i]
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"nats-server {i + 1} exited ({p.returncode}): "
                                       + self.log(i)[-1500:])
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster is not healthy after "
                                   f"{timeout:.0f} s:\n" + "\n".join(self.log(i)[-800:]
                                                                     for i in want))
            time.sleep(0.2)

    def log(self, i: int) -> str:
        p = self.dir / f"server-{i + 1}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self, i: int) -> None:
        """kill -9 server i."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None:
                stop_process(p, 10)
                self.procs[i] = None

