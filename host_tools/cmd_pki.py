"""`meterlink pki`: the fleet's own certificate authority (host_tools/pki.py).

    meterlink pki init   --dir pki --name "City of Example meter fleet"
    meterlink pki issue  --dir pki broker mqtt-1 --host mqtt.example.org --ip 192.168.1.10
    meterlink pki issue  --dir pki node park-01          # then `meterlink provision --pki pki`
    meterlink pki issue  --dir pki client gateway
    meterlink pki revoke --dir pki park-01               # re-signs crl.pem: reload Mosquitto
    meterlink pki list   --dir pki
    meterlink pki broker-config --dir pki --broker mqtt-1 --port 8883 [--require-certificate]
    meterlink pki acl [--prefix m] [--gateway gateway]   # the fleet's Mosquitto acl_file

Every command prints what it wrote. docs/security.md says which files go where and when to
use client certificates rather than passwords.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from host_tools.device import say
from host_tools.pki import KINDS, Pki, fleet_acl, mosquitto_listener

HELP = "the fleet's certificate authority: CA, broker, node and gateway certificates, revocation"


def build_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    def action(name: str, help_line: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_line, description=help_line)
        p.add_argument("--dir", type=Path, default=Path("pki"),
                       help="the PKI folder (default: pki)")
        return p

    p = action("init", "make the CA (once per fleet)")
    p.add_argument("--name", default="meterlink fleet CA", help="the CA's common name")
    p = action("issue", "issue a certificate and key")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("name", help="node id, broker or client name (the certificate's CN)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="broker: a DNS name clients connect to (repeatable)")
    p.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                   help="broker: an IP address clients connect to (repeatable)")
    p.add_argument("--days", type=int, help="validity (default: node/client 10 years, broker 825 days)")
    p.add_argument("--renew", action="store_true",
                   help="replace the name's valid certificate (the old one is revoked)")
    p.add_argument("--keep-old", action="store_true",
                   help="with --renew: the old certificate stays valid until you revoke it by "
                        "its serial (rotation: the node switches first)")
    p = action("revoke", "revoke a certificate by name or serial and re-sign the CRL")
    p.add_argument("name")
    action("list", "every certificate issued, with its state")
    action("crl", "sign the CRL again with a new next-update date")
    p = action("broker-config", "print the Mosquitto TLS listener for this PKI")
    p.add_argument("--broker", required=True, metavar="NAME", help="the broker certificate's name")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--require-certificate", action="store_true",
                   help="clients must present a certificate of this CA (CN = user name)")
    p = action("acl", "print the fleet's Mosquitto acl_file (each node its own topics only)")
    p.add_argument("--prefix", default="m", help="topic prefix (default: m)")
    p.add_argument("--gateway", action="append", metavar="USER",
                   help="a gateway's user name (repeatable; default: gateway)")


def run(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    cmd = args.pki_command
    if cmd == "init":
        cert = pki.init(args.name)
        say(f"CA {args.name!r} in {args.dir}/ (valid until {cert.not_valid_after_utc:%Y-%m-%d}): "
            f"ca.crt for the broker and gateways, ca.der for nodes; keep ca.key offline")
    elif cmd == "issue":
        cert = pki.issue(args.kind, args.name, hosts=args.host, ips=args.ip, days=args.days,
                         renew=args.renew or args.keep_old, keep_old=args.keep_old)
        say(f"{args.kind} {args.name}: {pki.cert_path(args.kind, args.name)} and "
            f"{pki.key_path(args.kind, args.name)} (serial {cert.serial_number:x}, valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d})")
        if args.keep_old:
            say("the previous certificate stays valid: revoke it by its serial once the node "
                "uses the new one (`meterlink pki list`)")
        elif args.renew:
            say(f"the previous certificate is revoked in {pki.crl}: reload Mosquitto")
    elif cmd == "revoke":
        for e in pki.revoke(args.name):
            say(f"revoked {e['kind']} {e['name']} (serial {e['serial']})")
        say(f"{pki.crl} re-signed: reload Mosquitto (`sudo systemctl reload mosquitto`)")
    elif cmd == "list":
        for e in pki.index():
            state = f"revoked {e['revoked'][:10]}" if e["revoked"] else f"valid until {e['not_after'][:10]}"
            say(f"{e['kind']:<7} {e['name']:<24} serial {e['serial']:<40} {state}")
    elif cmd == "crl":
        pki.refresh_crl()
        say(f"{pki.crl} re-signed: reload Mosquitto")
    elif cmd == "acl":
        say(fleet_acl(prefix=args.prefix, gateways=args.gateway or ["gateway"]), end="")
    elif cmd == "broker-config":
        say(mosquitto_listener(pki, port=args.port, broker=args.broker,
                               require_certificate=args.require_certificate), end="")
    return 0
