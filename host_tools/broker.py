"""A private Mosquitto broker on a free loopback port, for tests, the demo and `simulate`.

Each broker gets its own folder with a config written here, its own persistence file and log;
nothing depends on a system service or a fixed port.

    with Mosquitto(workdir) as broker:
        print(broker.host, broker.port)
        broker.stop(); broker.start()   # restart mid-stream, same port, same persistence

    Mosquitto(workdir, tls=pki)         # the port speaks TLS with pki's "broker" certificate
    Mosquitto(workdir, tls=pki, require_certificate=True)   # and wants a client certificate

With `tls`, the broker's certificate is the PKI's broker certificate BROKER_CERT (issued here
the first time, for 127.0.0.1 and SERVER_NAME); `node_tls()` is the `broker.tls` section of a
node's config for it and `node_files()` the files that go with it on the node's filesystem;
`secure(client)` sets up a paho client for it, `gateway_conf()` the [mqtt] keys of a gateway.
With `require_certificate`, clients present a certificate of the PKI: `client_cert(name)`
issues one (a client's CN is its user name at the broker).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from host_tools import process, toolchain
from host_tools.pki import Pki, mosquitto_listener

BROKER_CERT = "broker"
SERVER_NAME = "broker.meterlink.test"  # the name in the test broker's certificate

# Debian's default max_queued_messages (1000) drops messages for an offline persistent
# session under load; a gateway that is down for a while must find every reading queued.
DEFAULT_CONF = """\
{listener}allow_anonymous {anonymous}
persistence {persistence}
persistence_location {workdir}/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 20
log_dest file {workdir}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
set_tcp_nodelay true
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One mosquitto process. `extra_conf` is appended to the generated config."""

    def __init__(self, workdir: str | Path, *, port: int | None = None, extra_conf: str = "",
                 anonymous: bool = True, persistence: bool = True, tls: Pki | None = None,
                 require_certificate: bool = False) -> None:
        self.tls = tls
        self.require_certificate = require_certificate
        if tls is not None and not tls.cert_path("broker", BROKER_CERT).exists():
            tls.issue("broker", BROKER_CERT, hosts=[SERVER_NAME, "localhost"], ips=["127.0.0.1"])
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.anonymous = anonymous
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"Mosquitto({self.host}:{self.port}, running={self.running})"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def node_tls(self, node_id: str | None = None) -> dict | None:
        """The `broker.tls` section of a node's config for this broker (None: plain MQTT):
        the CA pinned, the server's certificate checked for the address the node connects to
        (127.0.0.1 is in it); with require_certificate, the node's client certificate."""
        return None if self.tls is None else self._node(node_id)[0]

    def node_files(self, node_id: str | None = None) -> dict[str, bytes]:
        """The files `node_tls(node_id)` names, for the node's filesystem (the node's
        certificate is issued on first use)."""
        return {} if self.tls is None else self._node(node_id)[1]

    def _node(self, node_id: str | None) -> tuple[dict, dict[str, bytes]]:
        return self.tls.node_tls(node_id or "", cert=bool(self.require_certificate and node_id))

    def client_cert(self, name: str, *, kind: str = "client") -> tuple[Path, Path]:
        """(cert, key) PEM files of a client certificate `name` (issued on first use)."""
        assert self.tls is not None
        if not self.tls.cert_path(kind, name).exists():
            self.tls.issue(kind, name)
        return self.tls.cert_path(kind, name), self.tls.key_path(kind, name)

    def secure(self, client, name: str = "test-client"):
        """Sets up a paho client for this broker (TLS, and a client certificate `name` when the
        broker requires one); returns it."""
        if self.tls is not None:
            cert = key = None
            if self.require_certificate:
                cert, key = self.client_cert(name)
            client.tls_set(ca_certs=str(self.tls.ca_crt), certfile=cert and str(cert),
                           keyfile=key and str(key))
        return client

    def gateway_conf(self, name: str = "gateway") -> str:
        """The TLS keys of a gateway's [mqtt] section for this broker ("" without TLS)."""
        if self.tls is None:
            return ""
        lines = [f'ca_file = "{self.tls.ca_crt}"']
        if self.require_certificate:
            cert, key = self.client_cert(name)
            lines += [f'cert_file = "{cert}"', f'key_file = "{key}"']
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        if self.tls is None:
            listener = f"listener {self.port} 127.0.0.1\n"
        else:
            listener = mosquitto_listener(self.tls, port=self.port, broker=BROKER_CERT,
                                          bind="127.0.0.1",
                                          require_certificate=self.require_certificate)
        conf = DEFAULT_CONF.format(
            listener=listener, workdir=self.workdir,
            anonymous="true" if self.anonymous else "false",
            persistence="true" if self.persistence else "false",
        ) + self.extra_conf
        if os.geteuid() == 0:
            # Run as root, mosquitto drops to the `mosquitto` user, which cannot read the
            # private temp folders tests and the demo use: stay the invoking user instead.
            conf += "user root\n"
        self.conf_path.write_text(conf)
        self.proc = subprocess.Popen(
            [toolchain.mosquitto(), "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "mosquitto.stderr", "ab"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: "
                                   f"{(self.workdir / 'mosquitto.stderr').read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the broker (SIGTERM: it saves its persistence file first)."""
        if self.proc is None:
            return
        process.stop(self.proc, timeout)
        self.proc = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
