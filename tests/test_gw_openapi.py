"""The gateway's HTTP API against its own OpenAPI description, with schemathesis: valid and
malformed requests to every operation, generated from the description, on the real ASGI
application over a real outbox on disk. Every answer must be one the description documents,
never a 5xx, and a request the description does not allow must get a 4xx naming what is wrong.

Also: the published copy docs/openapi.json is what the gateway serves.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway.webapp import ApiServer
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.webapp import openapi_document

ROOT = Path(__file__).resolve().parents[1]
T0 = 1763712000


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """An API over a gateway's outbox with a registered node, a node with readings, a
    quarantined message and a dead letter (the gateway is not connected to any broker: a
    downlink is recorded and published into paho's queue, and never answered)."""
    folder = tmp_path_factory.mktemp("gw")
    config = parse_config({"sinks": {"file": {}}, "api": {"port": 0, "token": "t0ken"},
                           "gateway": {"ack_timeout_s": 1}}, base_dir=folder)
    gw = Gateway(config)
    gw.open_storage()
    with gw.box.transaction():
        gw.box.db.execute("INSERT INTO nodes(node, registered, board, sensors, grp, "
                          "interval_s) VALUES ('n1', 1, 'esp32-devkitc', '[]', 'roof', 60)")
        gw.box.quarantine("m/x/r", b"\x01", "cbor", 0, "not CBOR", T0, keep=100)
        item = gw.box.add_item("reading", "n2", 1, [{"n": "n2:temperature", "u": "Cel",
                                                    "v": 1.5, "t": T0}], T0)
        gw.box.db.execute("INSERT INTO deadletters(at, sink, batch_key, status, reply, body, "
                          "reason) VALUES (?, 'file', 'k', NULL, 'x', ?, 'unconvertible')",
                          (T0, json.dumps([{"id": item, "kind": "reading", "node": "n2",
                                            "seq": 1, "body": []}])))
    server = ApiServer(gw)
    server.start()
    yield server
    server.stop()
    gw.box.close()


@pytest.fixture(scope="module")
def api_schema(api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=40, with_security_parameters=False)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


# Checks left out, and why:
# - positive_data_acceptance on /api/send: its cross-field rules (exactly one of node, nodes,
#   group; exactly one of config, cmd) are in the operation's description, not expressible
#   as field constraints, so a schema-valid body can still be refused with a 400 naming them.
# - allow_header_conformance: Starlette answers a wrong method with the Allow header of the
#   first route matching the path, not of every route on it (GET and PUT /api/nodes/{node}
#   are two routes); the status (405) is right.
EXCLUDED = [schemathesis.checks.not_a_server_error, schemathesis.checks.allow_header_conformance]


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_described_and_never_5xx(case):
    if case.path == "/api/send" and isinstance(case.body, dict):
        case.body["timeout_s"] = 0  # nothing answers here: do not wait for acknowledgements
    response = case.call(headers={"Authorization": "Bearer t0ken"})
    not_ready = case.path == "/readyz" and response.status_code == 503  # not connected
    assert response.status_code < 500 or not_ready, \
        (case.method, case.path, case.body, response.text)
    if response.status_code >= 400 and not not_ready:
        error = response.json().get("error")
        assert isinstance(error, str) and error, response.text
    excluded = EXCLUDED + ([schemathesis.checks.positive_data_acceptance]
                           if case.path == "/api/send" else [])
    case.validate_response(response, excluded_checks=excluded)


def request(api, method: str, path: str, body=None, raw: bytes | None = None,
            token: str | None = "t0ken"):
    """(status, JSON reply, headers) from the API's real server (uvicorn, loopback)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{api.port}{path}", data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read()), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def test_the_published_description_is_the_served_one(api):
    status, served, _ = request(api, "GET", "/openapi.json", token=None)
    assert status == 200 and served == openapi_document()
    assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == served, \
        "docs/openapi.json is out of date: python -m gateway.webapp > docs/openapi.json"


def test_malformed_requests_name_the_field(api):
    cases = [
        ("PUT", "/api/nodes/n9", {"board": "b", "sensors": [], "interval_s": "60"},
         "interval_s: Input should be a valid integer (got '60')"),
        ("PUT", "/api/nodes/n9", {"board": "b", "sensors": [], "interval_s": 60, "x": 1},
         "x: Extra inputs are not permitted (got 1)"),
        ("PUT", "/api/nodes/n9", {"board": "b", "interval_s": 60}, "sensors: Field required"),
        ("PUT", "/api/nodes/Bad!", {"board": "b", "sensors": [], "interval_s": 60},
         "node: String should match pattern"),
        ("POST", "/api/send", {"node": "n1", "cmd": "diag", "timeout_s": -1},
         "timeout_s: Input should be greater than or equal to 0 (got -1)"),
        ("POST", "/api/send", {"nodes": [], "cmd": "diag"},
         "nodes: List should have at least 1 item after validation, not 0"),
        ("POST", "/api/send", {"node": "n1", "group": "roof", "cmd": "diag"},
         "give exactly one of node, nodes, group"),
        ("POST", "/api/deadletters/1/replay", {"again": "yes"},
         "again: Input should be a valid boolean (got 'yes')"),
        ("POST", "/api/deadletters/9223372036854775808/replay", None,
         "letter: Input should be less than or equal to 9223372036854775807"),
        ("GET", "/api/quarantine?limit=0", None,
         "limit: Input should be greater than or equal to 1 (got '0')"),
    ]
    for method, path, body, message in cases:
        status, reply, _ = request(api, method, path, body)
        assert status == 400, (path, body, reply)
        assert reply["error"].startswith(message), (path, body, reply)
    status, reply, _ = request(api, "PUT", "/api/nodes/n9", raw=b"{not json")
    assert status == 400 and reply["error"].startswith("body is not JSON"), reply
    # a body announced over 1 MiB is refused on its header, before it is read
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    conn.putrequest("POST", "/api/send")
    conn.putheader("Authorization", "Bearer t0ken")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 413, reply.read()
    assert json.loads(reply.read()) == {"error": "body over 1048576 bytes"}
    conn.close()
    status, reply, headers = request(api, "GET", "/api/nodes", token="wrong")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert request(api, "GET", "/healthz", token=None)[:2] == (200, {"ok": True})
    started = time.monotonic()
    status, reply, _ = request(api, "POST", "/api/send",
                               {"node": "n1", "cmd": "diag", "timeout_s": 0.2})
    assert status == 200 and reply["results"][0]["result"] == "timeout", reply
    assert time.monotonic() - started < 5
