"""The fleet's certificates: a CA of its own, the broker's server certificate, client
certificates for nodes and gateways, and their revocation. Built on the `cryptography`
package; nothing here talks to a device or a broker.

    ca = Pki(Path("pki"))
    ca.init("City of Example meter fleet")          # once: ca.key, ca.crt, crl.pem
    ca.issue("broker", "mqtt-1", hosts=["mqtt.example.org"], ips=["192.168.1.10"])
    ca.issue("node", "park-01")                     # nodes/park-01.crt.der + .key.der
    ca.issue("client", "gateway")
    ca.revoke("park-01")                            # into crl.pem (Mosquitto's crlfile)

Keys are EC P-256 with ECDSA-SHA256 signatures: mbedTLS on the ESP32 verifies and signs them
in a fraction of the time an RSA-2048 key takes (the handshake is what a battery node pays
for at every send), and a certificate is about half the size. Client certificates carry the
name as their common name (CN), which Mosquitto takes as the user name with
`use_identity_as_username`, so the broker ACL that keeps a node to its own topics works the
same with certificates as with passwords.

A folder (`meterlink pki init --dir pki`):

    ca.key                  the CA's private key (PEM, mode 0600): keep it offline
    ca.crt, ca.der          the CA certificate: the broker's cafile and the gateway's ca_file
                            (PEM); a node's `ca.der` (DER)
    crl.pem                 the revoked client certificates, signed by the CA: Mosquitto's
                            crlfile (re-signed by every revoke, valid CRL_DAYS)
    index.json              every certificate issued: serial, kind, name, not_after, revoked
    broker/NAME.crt, .key   server certificates (PEM)
    nodes/ID.crt, .key      node certificates (PEM), and .crt.der / .key.der: the files a
                            node gets (`meterlink provision --pki`)
    clients/NAME.crt, .key  gateways and other clients (PEM)

Errors are `PkiError` naming the file or the name: a folder without a CA, a name issued
twice (revoke it first, or `--renew`), a name no certificate has.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meterlink_common import UserError, write_atomic

KINDS = {"broker": "broker", "node": "nodes", "client": "clients"}  # kind -> folder
CA_DAYS = 20 * 365  # the fleet's lifetime: a CA cannot be replaced without touching every node
CERT_DAYS = 10 * 365  # a node's certificate: it must outlive a meter's 6-10 years in a pit
BROKER_DAYS = 825  # the longest a server certificate should live (CA/Browser Forum)
CRL_DAYS = 365  # Mosquitto refuses every client once the CRL's next update has passed
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PkiError(UserError):
    """A PKI folder or a request that cannot be served, with the file or name."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """A key (`secret`: mode 0600 from its creation) or a certificate, replaced atomically
    and on the disk before it is used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o600 if secret else 0o644, durable=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """One PKI folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Pki({str(self.root)!r})"

    # ---------------------------------------------------------------- files
    @property
    def ca_crt(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_der(self) -> Path:
        return self.root / "ca.der"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    def cert_path(self, kind: str, name: str) -> Path:
        return self.root / KINDS[kind] / f"{name}.crt"

    def key_path(self, kind: str, name: str) -> Path:
        return self.root / KINDS[kind] / f"{name}.key"

    def index(self) -> list[dict]:
        try:
            return json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise PkiError(f"{self.root / 'index.json'} is not valid JSON: {exc}") from exc

    def _save_index(self, entries: list[dict]) -> None:
        _write(self.root / "index.json", (json.dumps(entries, indent=1) + "\n").encode())

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_crt.read_bytes())
            key = serialization.load_pem_private_key((self.root / "ca.key").read_bytes(), None)
        except FileNotFoundError as exc:
            raise PkiError(f"no CA in {self.root}: {exc.filename} is missing "
                           f"(`meterlink pki init --dir {self.root}` makes one)") from exc
        return cert, key

    # ---------------------------------------------------------------- operations
    def init(self, name: str, *, days: int = CA_DAYS) -> x509.Certificate:
        """Makes the CA and an empty CRL; refuses a folder that has one (it would orphan every
        certificate the old one signed)."""
        if self.ca_crt.exists() or (self.root / "ca.key").exists():
            raise PkiError(f"{self.root} already has a CA ({self.ca_crt}): a new one would "
                           f"invalidate every certificate it signed; use another --dir")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meterlink fleet")])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        _write(self.root / "ca.key", _key_pem(key), secret=True)
        _write(self.ca_crt, cert.public_bytes(serialization.Encoding.PEM))
        _write(self.ca_der, cert.public_bytes(serialization.Encoding.DER))
        self._save_index([])
        self._write_crl(cert, key, [])
        return cert

    def issue(self, kind: str, name: str, *, hosts: tuple[str, ...] | list[str] = (),
              ips: tuple[str, ...] | list[str] = (), days: int | None = None,
              renew: bool = False, keep_old: bool = False) -> x509.Certificate:
        """Issues a certificate and key for `name`: kind "broker" (a server: `hosts` and `ips`
        go into its subjectAltName, at least one is required), "node" or "client". A name
        with a valid certificate is refused unless `renew`: the old one is then revoked, or
        with `keep_old` stays valid until `revoke(serial)` (a rotation: the node switches to
        the new one first, docs/security.md)."""
        if kind not in KINDS:
            raise PkiError(f"kind must be one of {', '.join(KINDS)}: got {kind!r}")
        if not NAME.match(name):
            raise PkiError(f"name must be 1-64 characters A-Z a-z 0-9 . _ -, starting with a "
                           f"letter or digit: got {name!r}")
        if kind == "broker" and not (hosts or ips):
            raise PkiError("a broker certificate needs the names clients connect to: "
                           "--host NAME and/or --ip ADDRESS")
        try:
            addresses = [ipaddress.ip_address(a) for a in ips]
        except ValueError as exc:
            raise PkiError(f"--ip: {exc}") from exc
        ca_cert, ca_key = self._ca()
        entries = self.index()
        live = [e for e in entries if e["kind"] == kind and e["name"] == name and not e["revoked"]]
        if live and not renew:
            raise PkiError(f"{kind} {name} already has a certificate (serial {live[0]['serial']}, "
                           f"valid until {live[0]['not_after']}): revoke it first, or renew")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        days = days or (BROKER_DAYS if kind == "broker" else CERT_DAYS)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_cert_sign=False, crl_sign=False,
                       content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if kind == "broker":
            san = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(a) for a in addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        for old in live if not keep_old else ():
            old["revoked"] = now.isoformat()
        entries.append({"serial": f"{cert.serial_number:x}", "kind": kind, "name": name,
                        "not_after": cert.not_valid_after_utc.isoformat(), "revoked": None})
        _write(self.key_path(kind, name), _key_pem(key), secret=True)
        _write(self.cert_path(kind, name), cert.public_bytes(serialization.Encoding.PEM))
        if kind == "node":
            folder = self.root / KINDS[kind]
            _write(folder / f"{name}.crt.der", cert.public_bytes(serialization.Encoding.DER))
            _write(folder / f"{name}.key.der", key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), secret=True)
        self._save_index(entries)
        if live and not keep_old:
            self._write_crl(ca_cert, ca_key, entries)
        return cert

    def revoke(self, name_or_serial: str) -> list[dict]:
        """Revokes every valid certificate of that name (or the one with that serial, hex) and
        re-signs the CRL; returns the entries revoked."""
        ca_cert, ca_key = self._ca()
        entries = self.index()
        hits = [e for e in entries if not e["revoked"] and
                (e["name"] == name_or_serial or e["serial"] == name_or_serial.lower())]
        if not hits:
            raise PkiError(f"no valid certificate named or numbered {name_or_serial!r} in "
                           f"{self.root} (`meterlink pki list --dir {self.root}`)")
        now = _now().isoformat()
        for e in hits:
            e["revoked"] = now
        self._save_index(entries)
        self._write_crl(ca_cert, ca_key, entries)
        return hits

    def node_tls(self, node_id: str, *, cert: bool = False,
                 server_name: str | None = None) -> tuple[dict, dict[str, bytes]]:
        """What a node that trusts this CA gets: its config's `broker.tls` section and the files
        it names, for its filesystem (`ca.der`; with `cert`, its own certificate and key,
        issued here on first use)."""
        if not self.ca_der.exists():
            raise PkiError(f"no CA in {self.root}: {self.ca_der} is missing "
                           f"(`meterlink pki init --dir {self.root}` makes one)")
        tls: dict = {"ca": "ca.der"}
        files = {"ca.der": self.ca_der.read_bytes()}
        if server_name:
            tls["server_name"] = server_name
        if cert:
            if not self.cert_path("node", node_id).exists():
                self.issue("node", node_id)
            folder = self.root / KINDS["node"]
            tls.update(cert="node.crt.der", key="node.key.der")
            files["node.crt.der"] = (folder / f"{node_id}.crt.der").read_bytes()
            files["node.key.der"] = (folder / f"{node_id}.key.der").read_bytes()
        return tls, files

    def refresh_crl(self) -> None:
        """Signs the CRL again with a new next-update date (it must not lapse: see CRL_DAYS)."""
        ca_cert, ca_key = self._ca()
        self._write_crl(ca_cert, ca_key, self.index())

    def _write_crl(self, ca_cert, ca_key, entries: list[dict]) -> None:
        now = _now()
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5))
                   .next_update(now + dt.timedelta(days=CRL_DAYS)))
        for e in entries:
            if e["revoked"]:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(e["serial"], 16))
                    .revocation_date(dt.datetime.fromisoformat(e["revoked"]))
                    .build())
        crl = builder.sign(ca_key, hashes.SHA256())
        _write(self.crl, crl.public_bytes(serialization.Encoding.PEM))


def mosquitto_listener(pki: Pki, *, port: int, broker: str, bind: str = "",
                       require_certificate: bool = False) -> str:
    """The Mosquitto config of a TLS listener with this PKI's broker certificate `broker`.
    With `require_certificate`, a client must present a certificate of this CA that the CRL
    does not revoke, and its CN is its user name (the ACL's %u and `user` lines)."""
    lines = [f"listener {port}{' ' + bind if bind else ''}",
             f"cafile {pki.ca_crt.resolve()}",
             f"certfile {pki.cert_path('broker', broker).resolve()}",
             f"keyfile {pki.key_path('broker', broker).resolve()}",
             "tls_version tlsv1.2"]
    if require_certificate:
        lines += ["require_certificate true", "use_identity_as_username true",
                  f"crlfile {pki.crl.resolve()}"]
    return "\n".join(lines) + "\n"


def fleet_acl(*, prefix: str = "m", gateways: tuple[str, ...] | list[str] = ("gateway",)) -> str:
    """A Mosquitto acl_file for the whole fleet: every node may write only its own r, s and a
    topics and read only its own c and k, by its user name (%u: the CN of its certificate with
    use_identity_as_username, or its password user, which provision makes its node id). Not
    the client id (%c): a client picks that itself, so another node's credentials could claim
    it. The gateways read and write everything under the prefix."""
    lines = ["# meterlink fleet ACL (meterlink pki acl): a node's own topics only"]
    lines += [f"pattern write {prefix}/%u/{k}" for k in "rsa"]
    lines += [f"pattern read {prefix}/%u/{k}" for k in "ck"]
    for g in gateways:
        lines += ["", f"user {g}", f"topic readwrite {prefix}/#"]
    return "\n".join(lines) + "\n"
