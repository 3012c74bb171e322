"""`meterlink nats-config`: the config files of a NATS Server cluster for the clustered
deployment (docs/gateway.md, "Past one machine"), one per server.

    meterlink nats-config --servers 10.0.0.11,10.0.0.12,10.0.0.13 --out nats/
                          [--store /var/lib/nats] [--mqtt-port 1883] [--max-store 50G]
                          [--tls-cert F --tls-key F --tls-ca F [--pki DIR] [--gateways A,B]]

Writes `nats/server-1.conf` ... : server name `ml-N`, the client port 4222, cluster routes on
6222 to every other server, JetStream with its store (`--store`, at most `--max-store`), the
monitoring port 8222 (health: `/healthz`), and an MQTT listener for the nodes (1883, or with
`--tls-*` 8883 with the fleet CA verifying their client certificates, as the Mosquitto broker
does: docs/security.md). Copy each to its server as /etc/nats-server.conf (Debian's
nats-server unit reads it) and start them; the gateway's [jetstream] `servers` lists the
`nats://ADDRESS:4222` of all of them.

Every server has the same `authorization` (host_tools/nats.py): the gateway's user
`meterlink-gateway`, whose new random password goes to `nats/gateway.password` (mode 0600;
an existing one is kept, so writing the configs again does not lock the gateways out), and
the nodes' user, which may publish only `{prefix}/<node>/r|s|a` (`--prefix`, m). The password
is in the configs as well: keep them readable by nats-server only.

With `--pki DIR` (the fleet's CA folder, `meterlink pki`; it needs `--tls-*`) every node
certificate in it is a user of its own, named by its certificate (`CN=<node>`), that may
publish only its own topics and subscribe only to its own downlinks, as Mosquitto's ACL keeps
a node; the client certificates named by `--gateways` (default: `gateway`) are the gateway
instances' MQTT users, with every right; any other certificate is refused. Run it again after
`meterlink provision` issued a node's certificate or `meterlink pki revoke` revoked one, copy
the configs, and reload the servers (`systemctl reload nats-server`): NATS 2.9 reads no CRL.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
from pathlib import Path

from host_tools.device import say
from host_tools.nats import GATEWAY_USER, pki_identities, server_config
from meterlink_common import EXIT_INPUT, UserError, write_atomic

HELP = "write the config files of a NATS cluster (JetStream R3, MQTT for the nodes)"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", required=True, metavar="A,B,C",
                        help="the servers' addresses (3 or 5), as the others reach them")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--store", default="/var/lib/nats", metavar="DIR",
                        help="JetStream's store on each server (default: /var/lib/nats)")
    parser.add_argument("--max-store", default="50G", metavar="SIZE",
                        help="JetStream's file store limit (default: 50G)")
    parser.add_argument("--mqtt-port", type=int, metavar="PORT",
                        help="the nodes' MQTT port (default: 1883, 8883 with TLS)")
    parser.add_argument("--prefix", default="m", metavar="P",
                        help="the nodes' topic prefix, as [mqtt] prefix (default: m)")
    parser.add_argument("--tls-cert", metavar="FILE", help="the server's certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="its key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="the fleet CA: nodes must present a certificate it issued")
    parser.add_argument("--pki", type=Path, metavar="DIR",
                        help="the fleet's CA folder: each node certificate in it may use only "
                             "its own topics (needs --tls-*)")
    parser.add_argument("--gateways", default="gateway", metavar="A,B",
                        help="with --pki: the client certificates of the gateway instances "
                             "(default: gateway)")


def run(args: argparse.Namespace) -> int:
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if len(servers) not in (3, 5) or len(set(servers)) != len(servers):
        raise UserError(f"--servers must name 3 or 5 different servers (JetStream's quorum): "
                        f"got {args.servers!r}", exit_code=EXIT_INPUT)
    for s in servers:
        try:
            ipaddress.ip_address(s)
        except ValueError:
            if not s.replace("-", "").replace(".", "").isalnum():
                raise UserError(f"--servers: {s!r} is not an address or a host name",
                                exit_code=EXIT_INPUT) from None
    tls = [args.tls_cert, args.tls_key, args.tls_ca]
    if any(tls) and not all(tls):
        raise UserError("--tls-cert, --tls-key and --tls-ca go together", exit_code=EXIT_INPUT)
    identities = None
    if args.pki is not None:
        if not all(tls):
            raise UserError("--pki needs --tls-cert, --tls-key and --tls-ca: the MQTT listener "
                            "maps the nodes' certificates to their users", exit_code=EXIT_INPUT)
        from host_tools.pki import Pki, PkiError

        wanted = [g.strip() for g in args.gateways.split(",") if g.strip()]
        try:
            identities = pki_identities(Pki(args.pki), wanted)
        except PkiError as exc:
            raise UserError(f"--pki: {exc}", exit_code=EXIT_INPUT) from None
        missing = sorted(set(wanted) - set(identities[0]))
        if missing:
            raise UserError(f"--gateways: {', '.join(missing)} has no live client certificate "
                            f"in {args.pki} (`meterlink pki issue --dir {args.pki} client NAME`)",
                            exit_code=EXIT_INPUT)
    port = args.mqtt_port or (8883 if all(tls) else 1883)
    args.out.mkdir(parents=True, exist_ok=True)
    secret = args.out / "gateway.password"
    if secret.exists():
        password = secret.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)
        write_atomic(secret, (password + "\n").encode(), mode=0o600)
    for i, host in enumerate(servers):
        text = server_config(f"ml-{i + 1}", host="0.0.0.0", client_port=4222,
                             cluster_port=6222, mqtt_port=port, http_port=8222,
                             routes=[f"nats-route://{h}:6222" for h in servers if h != host],
                             store_dir=args.store, max_file_store=args.max_store,
                             gateway_password=password, prefix=args.prefix,
                             tls=tuple(tls) if all(tls) else None, identities=identities)
        path = args.out / f"server-{i + 1}.conf"
        write_atomic(path, text.encode(), mode=0o600)  # it holds the gateway's password
        say(f"{path}: for {host} (ml-{i + 1})")
    say(f"gateway.toml: [jetstream] servers = "
        f"[{', '.join(repr(f'nats://{h}:4222') for h in servers)}]".replace("'", '"'))
    say(f"gateway.toml: [jetstream] and [mqtt]: user(name) = \"{GATEWAY_USER}\", password = "
        f"the one line of {secret}")
    say(f"nodes: broker host = any of {', '.join(servers)}, port {port}")
    if identities is not None:
        say(f"users: {len(identities[1])} node certificate(s), gateway instance(s) "
            f"{', '.join(identities[0])} (their [mqtt] cert_file and key_file, no password); "
            "run this again after issuing or revoking a certificate, then reload the servers")
    return 0
