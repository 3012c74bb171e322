"""The fleet's security, with real parts: certificates made by `meterlink pki` (the
`cryptography` package), a real Mosquitto with a TLS listener, the node's MQTT client over
mbedTLS in the MicroPython unix port, and the real gateway.

- the PKI's chain verifies, its names and uses are right, revocation lands in a signed CRL;
- a node trusts only its fleet's CA and the broker's name: another CA or another name is
  refused, and nothing is sent;
- with client certificates required, only certified clients connect (none, another CA's, or
  a revoked one are refused), and the certificate's CN is the client's identity;
- with the fleet ACL, a node with valid credentials cannot publish for another node or read
  another node's configuration;
- passwords travel only inside TLS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import time

import cbor2
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway_support import GatewayProcess, wait_for
from host_tools.broker import Mosquitto
from host_tools.pki import Pki, PkiError, fleet_acl
from host_tools.vboard.node import VirtualNode, default_config


def reading(seq: int) -> bytes:
    """A one-record reading message (docs/wire-format.md): temperature 21.53 degC."""
    return cbor2.dumps([1, seq, int(time.time()), {1: 2153}])


def node_readings(gw: GatewayProcess, node_id: str) -> set[int]:
    return {r["seq"] for r in gw.records() if r["node"] == node_id}


# ------------------------------------------------------------------------------ the PKI
def test_the_pki_issues_certificates_that_verify_and_revokes_into_a_signed_crl(tmp_path):
    pki = Pki(tmp_path / "pki")
    ca = pki.init("Test fleet")
    broker = pki.issue("broker", "mqtt-1", hosts=["mqtt.example.org"], ips=["192.168.1.10"])
    node = pki.issue("node", "park-01")
    client = pki.issue("client", "gateway")
    for cert in (broker, node, client):
        cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.10"]
    eku = x509.ExtendedKeyUsage
    assert ExtendedKeyUsageOID.SERVER_AUTH in broker.extensions.get_extension_for_class(eku).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in node.extensions.get_extension_for_class(eku).value
    assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "park-01"
    # what a node gets: DER files that parse, and private keys nobody else can read
    der = (tmp_path / "pki" / "nodes" / "park-01.crt.der").read_bytes()
    assert x509.load_der_x509_certificate(der) == node
    for key in ("ca.key", "nodes/park-01.key", "nodes/park-01.key.der", "broker/mqtt-1.key"):
        assert stat.S_IMODE((tmp_path / "pki" / key).stat().st_mode) == 0o600, key

    with pytest.raises(PkiError, match="park-01 already has a certificate"):
        pki.issue("node", "park-01")
    with pytest.raises(PkiError, match="already has a CA"):
        pki.init("Another")
    with pytest.raises(PkiError, match="needs the names clients connect to"):
        pki.issue("broker", "mqtt-2")

    renewed = pki.issue("node", "park-01", renew=True)  # the old one is revoked by it
    pki.revoke("gateway")
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    assert crl.is_signature_valid(ca.public_key())
    revoked = {r.serial_number for r in crl}
    assert revoked == {node.serial_number, client.serial_number}
    assert renewed.serial_number not in revoked
    with pytest.raises(PkiError, match="no valid certificate named"):
        pki.revoke("gateway")
    # openssl, a second implementation, agrees with the chain
    done = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca_crt),
                           str(pki.cert_path("node", "park-01"))], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pki_commands_print_what_they_wrote(tmp_path, capsys):
    from host_tools import cli

    d = str(tmp_path / "pki")
    assert cli.main(["pki", "init", "--dir", d, "--name", "City fleet"]) == 0
    assert cli.main(["pki", "issue", "--dir", d, "node", "park-01"]) == 0
    assert cli.main(["pki", "list", "--dir", d]) == 0
    assert cli.main(["pki", "revoke", "--dir", d, "park-01"]) == 0
    out = capsys.readouterr().out
    assert "CA 'City fleet' in" in out and "node park-01: " in out
    assert "revoked node park-01" in out
    assert cli.main(["pki", "issue", "--dir", str(tmp_path / "none"), "node", "x"]) == 1
    assert "no CA in" in capsys.readouterr().err


# ------------------------------------------------------------------------------ TLS


def tls_node(tmp_path, broker, node_id: str, *, tls: dict, files: dict) -> VirtualNode:
    cfg = default_config(node_id, broker.host, broker.port, interval_s=1, tls=tls)
    return VirtualNode(tmp_path / node_id, node_id=node_id, broker=(broker.host, broker.port),
                       config=cfg, files=files)


@pytest.mark.slow
def test_a_node_trusts_only_its_fleet_ca_and_the_brokers_name(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    stranger = stranger_ca(tmp_path)
    good = tls_node(tmp_path, broker, "good", tls={"ca": "ca.der"},
                    files=broker.node_files())
    wrong_ca = tls_node(tmp_path, broker, "wrong-ca", tls={"ca": "ca.der"},
                        files={"ca.der": stranger.ca_der.read_bytes()})
    wrong_name = tls_node(tmp_path, broker, "wrong-name",
                          tls={"ca": "ca.der", "server_name": "mqtt.elsewhere.example"},
                          files=broker.node_files())
    nodes = (good, wrong_ca, wrong_name)
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: len(node_readings(gw, "good")) >= 3, 30, "the good node's readings",
                 lambda: good.console()[-2000:])
        wait_for(lambda: wrong_ca.console().count("connect failed") >= 2, 30,
                 "two refused connects", lambda: wrong_ca.console()[-2000:])
        wait_for(lambda: wrong_name.console().count("connect failed") >= 2, 30,
                 "two refused connects", lambda: wrong_name.console()[-2000:])
    finally:
        for n in nodes:
            n.stop()
        gw.stop()
    assert "not correctly signed by the trusted CA" in wrong_ca.console()
    assert "does not match with the expected CN" in wrong_name.console()
    for n in (wrong_ca, wrong_name):
        assert not node_readings(gw, n.node_id), f"{n.node_id} sent to an untrusted broker"
        assert " queued seq=" in n.console(), "its readings wait in its queue"


def paho_connect(broker, *, ca: str | None, cert: tuple | None = None, client_id: str = "probe",
                 user: str | None = None, password: str | None = None) -> str:
    """Connects a paho client; returns "connected" or what refused it."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    if ca is not None:
        c.tls_set(ca_certs=ca, certfile=cert and str(cert[0]), keyfile=cert and str(cert[1]))
    if user is not None:
        c.username_pw_set(user, password)
    try:
        rc = c.connect(broker.host, broker.port, keepalive=10)
        if rc != 0:
            return f"rc {rc}"
        c.loop_start()
        deadline = time.monotonic() + 5
        while not c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        c.loop_stop()
        return "connected" if c.is_connected() else "not connected"
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        c.disconnect()


def fleet_broker(tmp_path, pki) -> Mosquitto:
    """A broker as docs/security.md sets one up: TLS, client certificates of the fleet CA
    required (the CN is the user name), the fleet ACL."""
    acl = tmp_path / "fleet.acl"
    acl.write_text(fleet_acl())
    return Mosquitto(tmp_path / "broker", tls=pki, require_certificate=True,
                     extra_conf=f"acl_file {acl}\n")


def stranger_ca(tmp_path) -> Pki:
    """A CA that is not the fleet's."""
    ca = Pki(tmp_path / "stranger")
    ca.init("Someone else's CA")
    return ca


@pytest.mark.slow
def test_with_client_certificates_only_certified_clients_connect(tmp_path, pki):
    stranger = stranger_ca(tmp_path)
    stranger.issue("client", "gateway")
    with fleet_broker(tmp_path, pki) as broker:
        gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()  # its own certificate
        node = VirtualNode(tmp_path / "pit-07", node_id="pit-07", broker=broker, interval_s=1)
        ca = str(pki.ca_crt)
        try:
            node.start()
            wait_for(lambda: len(node_readings(gw, "pit-07")) >= 2, 30,
                     "the certified node's readings", lambda: node.console()[-2000:])
            assert paho_connect(broker, ca=ca, cert=broker.client_cert("ops")) == "connected"
            # no certificate, and a certificate of another CA, are refused in the handshake
            assert paho_connect(broker, ca=ca) != "connected"
            assert paho_connect(broker, ca=ca, cert=(stranger.cert_path("client", "gateway"),
                                                     stranger.key_path("client", "gateway"))) \
                != "connected"
            # plain MQTT on the TLS port: no
            assert paho_connect(broker, ca=None) != "connected"
            # the node's certificate revoked: after the broker reloads its CRL the node is out
            pki.revoke("pit-07")
            broker.stop()
            broker.start()
            failures = node.console().count("connect failed")
            wait_for(lambda: node.console().count("connect failed") >= failures + 2, 60,
                     "the revoked node refused twice", lambda: node.console()[-2000:])
            before = node_readings(gw, "pit-07")
            time.sleep(3)
            assert node_readings(gw, "pit-07") == before, "a revoked node still delivers"
        finally:
            node.stop()
            gw.stop()


@pytest.mark.slow
def test_a_node_cannot_publish_for_another_node_or_read_its_config(tmp_path, pki):
    """Node A holds a valid certificate (its CN is its node id). Under the fleet ACL it can
    publish its own readings, but a reading it publishes as node B never reaches the gateway,
    and B's retained configuration never reaches it."""
    with fleet_broker(tmp_path, pki) as broker:
        gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
        ops = broker.secure(paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gateway-ops"),
                            "gateway")  # the gateway's identity may write configs
        ops.connect(broker.host, broker.port)
        ops.loop_start()
        ops.publish("m/node-b/c", cbor2.dumps({"v": 3, "patch": {}}), qos=1, retain=True
                    ).wait_for_publish(10)
        got: list[str] = []
        attacker = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="node-b")
        cert = broker.client_cert("node-a", kind="node")
        attacker.tls_set(ca_certs=str(pki.ca_crt), certfile=str(cert[0]), keyfile=str(cert[1]))
        attacker.on_message = lambda c, u, m: got.append(m.topic)
        try:
            # it even claims node B's client id: the ACL goes by the certificate's identity
            assert attacker.connect(broker.host, broker.port) == 0
            attacker.loop_start()
            for topic in ("m/node-b/c", "m/+/c", "m/node-b/k"):
                attacker.subscribe(topic, qos=1)
            attacker.publish("m/node-b/r", reading(7), qos=1).wait_for_publish(10)
            attacker.publish("m/node-a/r", reading(8), qos=1).wait_for_publish(10)
            wait_for(lambda: node_readings(gw, "node-a") == {8}, 20, "node A's own reading",
                     lambda: gw.log()[-2000:])
            time.sleep(1.0)  # anything let through would have arrived with it
        finally:
            attacker.loop_stop()
            attacker.disconnect()
            ops.loop_stop()
            ops.disconnect()
            gw.stop()
    assert node_readings(gw, "node-b") == set(), "node A published a reading as node B"
    assert got == [], f"node A read another node's topics: {got}"


@pytest.mark.slow
def test_a_node_with_a_password_connects_over_tls_only(tmp_path, pki):
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run([mosquitto_passwd, "-b", str(pw), "pit-08", "s3cret-0123456789"], check=True)
    subprocess.run([mosquitto_passwd, "-b", str(pw), "gateway", "gw-pass-0123456789"],
                   check=True)
    os.chmod(pw, 0o600)
    acl = tmp_path / "fleet.acl"
    acl.write_text(fleet_acl())
    with Mosquitto(tmp_path / "broker", tls=pki, anonymous=False,
                   extra_conf=f"password_file {pw}\nacl_file {acl}\n") as broker:
        gw = GatewayProcess(tmp_path / "gw", broker, client_id="gw-pw",
                            mqtt_extra='username = "gateway"\npassword = "gw-pass-0123456789"\n'
                            ).wait_subscribed()
        cfg = default_config("pit-08", broker.host, broker.port, interval_s=1,
                             tls=broker.node_tls())
        cfg["broker"].update(user="pit-08", password="s3cret-0123456789")
        node = VirtualNode(tmp_path / "pit-08", node_id="pit-08", broker=(broker.host, broker.port),
                           config=cfg, files=broker.node_files())
        try:
            node.start()
            wait_for(lambda: len(node_readings(gw, "pit-08")) >= 2, 30, "the node's readings",
                     lambda: node.console()[-2000:] + gw.log()[-1000:])
        finally:
            node.stop()
            gw.stop()
        assert paho_connect(broker, ca=str(pki.ca_crt), user="pit-08",
                            password="wrong") != "connected"
    assert json.loads((node.flash / "config.json").read_text())["broker"]["tls"] == {"ca": "ca.der"}


class Ops:
    """The gateway's side of a downlink, as `meterlink gateway send` publishes it: a command on
    `m/NODE/k`, the node's answer on `m/NODE/a` (under the gateway's certificate)."""

    def __init__(self, broker, node_id: str) -> None:
        self.node_id = node_id
        self.acks: list[dict] = []
        self.c = broker.secure(paho.Client(paho.CallbackAPIVersion.VERSION2,
                                           client_id="ops-" + node_id), "gateway")
        self.c.on_message = lambda c, u, m: self.acks.append(cbor2.loads(m.payload))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"m/{node_id}/a", qos=1)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        wait_for(self.c.is_connected, 10, "the operator's connection")
        time.sleep(0.3)  # the subscription

    def send(self, rid: int, **args) -> dict:
        from gateway.downlink import command_message

        self.c.publish(f"m/{self.node_id}/k",
                       command_message("cred", args, request_id=str(rid)), qos=1)
        return wait_for(lambda: next((a for a in self.acks if a.get("id") == str(rid)), None),
                        30, f"the node's answer to request {rid}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.slow
def test_credential_rotation_by_downlink_never_locks_the_node_out(tmp_path, pki):
    """The gateway sends a node a new certificate. One from another CA is refused by the
    broker: the node goes back to its old one at once and says why. One of the fleet CA is
    used from then on; the old one is revoked, the broker restarts, and the node carries on.
    Every reading it queued meanwhile reaches the gateway once."""
    stranger = stranger_ca(tmp_path)
    stranger.issue("node", "pit-21")
    with fleet_broker(tmp_path, pki) as broker:
        gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
        node = VirtualNode(tmp_path / "pit-21", node_id="pit-21", broker=broker, interval_s=1)
        config = node.flash / "config.json"
        ops = None
        try:
            node.start()
            wait_for(lambda: len(node_readings(gw, "pit-21")) >= 2, 30, "the first readings",
                     lambda: node.console()[-2000:])
            ops = Ops(broker, "pit-21")
            old_serial = pki.index()[-1]["serial"]
            before = config.read_text()

            # a certificate the broker does not accept
            bad = stranger.cert_path("node", "pit-21").parent
            ack = ops.send(1, cert=(bad / "pit-21.crt.der").read_bytes(),
                           key=(bad / "pit-21.key.der").read_bytes())
            assert ack["ok"] is False and "refused the new credential" in ack["err"], ack
            assert config.read_text() == before, "the old credential stays in the config"
            n = len(node_readings(gw, "pit-21"))
            wait_for(lambda: len(node_readings(gw, "pit-21")) >= n + 2, 30,
                     "readings on the old credential", lambda: node.console()[-2000:])

            # garbage is refused before the node even tries it
            ack = ops.send(2, cert=b"not a certificate", key=b"nor a key")
            assert ack["ok"] is False and "not usable" in ack["err"], ack

            # a renewed certificate of the fleet CA, the old one still valid for the switch
            pki.issue("node", "pit-21", renew=True, keep_old=True)
            new = pki.cert_path("node", "pit-21").parent
            ack = ops.send(3, cert=(new / "pit-21.crt.der").read_bytes(),
                           key=(new / "pit-21.key.der").read_bytes())
            assert ack == {"id": "3", "cmd": "cred", "ok": True}, ack
            tls = json.loads(config.read_text())["broker"]["tls"]
            assert tls["cert"] == "node2.crt.der" and tls["key"] == "node2.key.der"
            assert (node.flash / "node2.crt.der").read_bytes() == \
                (new / "pit-21.crt.der").read_bytes()
            assert (node.flash / "config.good.json").read_text() == config.read_text()

            # the old certificate revoked, the broker restarted: the node is back on the new one
            pki.revoke(old_serial)
            ops.close()
            ops = None
            broker.stop()
            broker.start()
            n = len(node_readings(gw, "pit-21"))
            wait_for(lambda: len(node_readings(gw, "pit-21")) >= n + 3, 60,
                     "readings after the old certificate was revoked",
                     lambda: node.console()[-2000:])
            # and a restart of the node keeps the new one (it is in the config now)
            node.stop()
            node.start()
            n = len(node_readings(gw, "pit-21"))
            wait_for(lambda: len(node_readings(gw, "pit-21")) >= n + 2, 60,
                     "readings after the node restarted", lambda: node.console()[-2000:])
            queued = {int(x) for x in re.findall(r" queued seq=(\d+) ", node.console())}
            wait_for(lambda: queued <= node_readings(gw, "pit-21"), 30,
                     "every queued reading at the gateway")
        finally:
            if ops is not None:
                ops.close()
            node.stop()
            gw.stop()
    seqs = sorted(node_readings(gw, "pit-21"))
    assert seqs == list(range(len(seqs))), "a gap: a reading was lost on the way"
    recs = [(r["seq"], r["n"]) for r in gw.records() if r["node"] == "pit-21"]
    assert len(recs) == len(set(recs)), "a reading stored twice"


def test_gateway_send_reads_a_credential_from_a_file(tmp_path):
    from gateway.downlink import command_message, parse_args

    der = bytes(range(256)) * 2
    (tmp_path / "node.crt.der").write_bytes(der)
    args = parse_args([f"cert=@{tmp_path / 'node.crt.der'}", "password=abc", "s=60"])
    assert args == {"cert": der, "password": "abc", "s": 60}
    msg = cbor2.loads(command_message("cred", {"cert": der}, request_id="7", now=1796000000))
    assert msg == {"cmd": "cred", "id": "7", "cert": der, "t": 1796000000}
    with pytest.raises(ValueError, match="cannot read"):
        parse_args([f"cert=@{tmp_path / 'missing.der'}"])
