"""The alarms' history and acknowledgement: the alarm log the registry keeps (each raise a row,
closed when the alarm clears), `GET /api/alarms/log`, `POST /api/alarms/{id}/ack`, and the
dashboard's /alarms page.

In-process and fast: the real ingest path (`Gateway.handle_message`) on a real outbox, the API
and the page's form over loopback. One browser test (slow): a real gateway process on a real
Mosquitto, an alarm appearing on the open page and acknowledged there; it takes the
screenshot docs/operations.md shows (docs/images/ with METERLINK_DOC_IMAGES=1, as
tests/test_gw_dashboard.py explains).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import cbor2
import pytest

from dashboard_support import IMAGES, WAIT_S
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.outbox import MIGRATIONS
from gateway_support import old_outbox

NOW = int(time.time())
DAY = 86400
LEAK, BACKFLOW = 1, 2  # bits of the `alarms` channel (wire key 16)


def reading(node: str, seq: int, t: int, *, alarms: int | None = None,
            mv: int = 3700) -> tuple[str, bytes]:
    """A reading message: temperature, battery (mV), and the alarm bits when given."""
    values = {1: 2100 + seq, 7: mv}
    if alarms is not None:
        values[16] = alarms
    return f"m/{node}/r", cbor2.dumps([1, seq, t, values])


def log_rows(gw: Gateway, node: str | None = None) -> list[tuple]:
    where, args = ("", ()) if node is None else (" WHERE node=?", (node,))
    return gw.box.db.execute("SELECT node, alarm, raised_at, cleared_at, detail, acked_at "
                             f"FROM alarm_log{where} ORDER BY id", args).fetchall()


def make_gateway(tmp_path, **gateway_keys) -> Gateway:
    config = parse_config({"sinks": {"file": {}}, "gateway": gateway_keys,
                           "api": {"port": 0, "token": "t0ken"}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    return gw


# ---- the alarm log, through the ingest path -----------------------------------------------

def test_each_raise_is_a_row_closed_by_its_clear_and_repeats_add_nothing(tmp_path):
    gw = make_gateway(tmp_path)
    h = gw.handle_message
    assert h(*reading("n1", 1, NOW, alarms=LEAK), received_at=NOW) == "accepted"
    assert h(*reading("n1", 2, NOW + 60, alarms=LEAK), received_at=NOW + 60) == "accepted"
    assert h(*reading("n1", 1, NOW, alarms=LEAK), received_at=NOW + 61) == "duplicate"
    assert log_rows(gw) == [("n1", "leak", NOW, None, "alarms channel = 1", None)]
    assert h(*reading("n1", 3, NOW + 120, alarms=0), received_at=NOW + 120) == "accepted"
    assert h(*reading("n1", 4, NOW + 180, alarms=LEAK | BACKFLOW),
             received_at=NOW + 180) == "accepted"
    assert h(*reading("n1", 4, NOW + 180, alarms=LEAK | BACKFLOW),
             received_at=NOW + 181) == "duplicate"
    assert log_rows(gw) == [
        ("n1", "leak", NOW, NOW + 120, "alarms channel = 1", None),
        ("n1", "leak", NOW + 180, None, "alarms channel = 3", None),
        ("n1", "backflow", NOW + 180, None, "alarms channel = 3", None)]
    # the log and the current state agree
    assert gw.box.db.execute("SELECT alarm, active, raised_at FROM alarms ORDER BY alarm"
                             ).fetchall() == [("backflow", 1, NOW + 180), ("leak", 1, NOW + 180)]

    # a reading that changes no alarm does no alarm-log work at all
    statements: list[str] = []
    gw.box.db.set_trace_callback(statements.append)
    assert h(*reading("n1", 5, NOW + 240, alarms=LEAK | BACKFLOW),
             received_at=NOW + 240) == "accepted"
    gw.box.db.set_trace_callback(None)
    assert statements and not [s for s in statements
                               if "alarm_log" in s or re.search(r"(INTO|UPDATE) alarms", s)]

    # retiring the node clears (closes) its rows; gateway-level alarms are logged too
    gw.on_ingest_thread(lambda reg: reg.retire("n1", NOW + 300, "meter replaced"))
    assert [r[3] for r in log_rows(gw, "n1")] == [NOW + 120, NOW + 300, NOW + 300]
    gw.on_ingest_thread(lambda reg: reg.set_alarm("-gateway", "outbox_full", True, NOW + 301,
                                                  "outbox at 1 GiB"))
    assert log_rows(gw, "-gateway") == [("-gateway", "outbox_full", NOW + 301, None,
                                         "outbox at 1 GiB", None)]


def test_deleting_a_node_deletes_its_alarm_log(tmp_path):
    gw = make_gateway(tmp_path, offline_grace_s=0)
    # n9 never sent a reading (registered with a wrong id) but went offline: one alarm row
    gw.handle_message("m/n9/s", cbor2.dumps({"on": False}), received_at=NOW)
    gw.handle_message(*reading("n1", 1, NOW, alarms=LEAK), received_at=NOW)
    assert [r[:2] for r in log_rows(gw)] == [("n9", "offline"), ("n1", "leak")]
    gw.on_ingest_thread(lambda reg: reg.delete("n9"))
    assert [r[:2] for r in log_rows(gw)] == [("n1", "leak")]


def test_a_flapping_alarm_keeps_a_bounded_log_and_its_open_row(tmp_path, monkeypatch):
    from gateway import registry

    monkeypatch.setattr(registry, "ALARM_LOG_KEEP", 3)
    gw = make_gateway(tmp_path)
    for i in range(10):  # raised and cleared ten times, then raised for good
        gw.handle_message(*reading("n1", 2 * i + 1, NOW + 120 * i, alarms=LEAK),
                          received_at=NOW + 120 * i)
        gw.handle_message(*reading("n1", 2 * i + 2, NOW + 120 * i + 60, alarms=0),
                          received_at=NOW + 120 * i + 60)
    gw.handle_message(*reading("n1", 21, NOW + 1200, alarms=LEAK), received_at=NOW + 1200)
    rows = log_rows(gw, "n1")
    assert [(r[2], r[3]) for r in rows] == [(NOW + 840, NOW + 900), (NOW + 960, NOW + 1020),
                                            (NOW + 1080, NOW + 1140), (NOW + 1200, None)]


def test_a_version_6_outbox_carries_its_alarms_into_the_log(tmp_path):
    db = old_outbox(tmp_path / "outbox.db", 6)
    db.execute("INSERT INTO nodes(node, min_seq, max_seq) VALUES ('n1', 1, 7)")
    db.execute("INSERT INTO alarms VALUES ('n1', 'leak', 1, ?, NULL, 'alarms channel = 1')",
               (NOW - 600,))
    db.execute("INSERT INTO alarms VALUES ('n1', 'low_battery', 0, ?, ?, '3210 mV')",
               (NOW - 900, NOW - 800))
    db.close()
    gw = make_gateway(tmp_path)
    assert gw.box.schema_version == len(MIGRATIONS)
    assert log_rows(gw) == [("n1", "low_battery", NOW - 900, NOW - 800, "3210 mV", None),
                            ("n1", "leak", NOW - 600, None, "alarms channel = 1", None)]
    # the carried-over open row is the one the next clear closes; nothing is added
    gw.handle_message(*reading("n1", 8, NOW, alarms=0), received_at=NOW)
    assert log_rows(gw)[1] == ("n1", "leak", NOW - 600, NOW, "alarms channel = 1", None)
    assert len(log_rows(gw)) == 2


# ---- the API and the page's form, over loopback -------------------------------------------

@pytest.fixture
def served(tmp_path):
    """A gateway's API and dashboard on a loopback port, with alarms in its log: n1's leak
    (active), n2's low battery (raised and cleared), n0's leak eight days ago (cleared)."""
    from gateway.webapp import ApiServer

    gw = make_gateway(tmp_path)
    h = gw.handle_message
    h(*reading("n0", 1, NOW - 8 * DAY, alarms=LEAK), received_at=NOW - 8 * DAY)
    h(*reading("n0", 2, NOW - 8 * DAY + 60, alarms=0), received_at=NOW - 8 * DAY + 60)
    h(*reading("n2", 1, NOW - 300, mv=3100), received_at=NOW - 300)
    h(*reading("n2", 2, NOW - 200, mv=3700), received_at=NOW - 200)
    h(*reading("n1", 1, NOW - 100, alarms=LEAK), received_at=NOW - 100)
    server = ApiServer(gw)
    server.start()
    try:
        yield gw, server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        gw.box.close()


def call(base: str, method: str, path: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"{base}{path}", data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": "Bearer t0ken"})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ids(base: str, query: str) -> list[tuple[str, str]]:
    status, rows = call(base, "GET", f"/api/alarms/log{query}")
    assert status == 200, rows
    return [(r["node"], r["alarm"]) for r in rows]


def test_the_api_lists_the_log_by_state_and_acknowledges_once(served, caplog):
    from gateway.api import ALARM_LOG_STATES
    from gateway.webapp import ALARM_STATES

    gw, _, base = served
    assert ALARM_STATES == f"^({'|'.join(ALARM_LOG_STATES)})$"
    every = [("n1", "leak"), ("n2", "low_battery"), ("n0", "leak")]
    assert ids(base, "") == every  # newest first
    assert ids(base, "?state=open") == [("n1", "leak")]
    assert ids(base, "?state=recent") == every[:2]
    assert ids(base, "?state=unacked") == ids(base, "?state=attention") == every
    assert ids(base, "?node=n2") == [("n2", "low_battery")]
    assert ids(base, "?limit=1") == [("n1", "leak")]
    status, rows = call(base, "GET", "/api/alarms/log?node=n1")
    leak = rows[0]
    assert leak == {"id": leak["id"], "node": "n1", "alarm": "leak", "raised_at": NOW - 100,
                    "cleared_at": None, "detail": "alarms channel = 1", "acked_at": None,
                    "acked_by": None, "ack_note": None, "active": True}
    assert call(base, "GET", "/api/alarms")[1] == [
        {"node": "n1", "alarm": "leak", "raised_at": NOW - 100,
         "detail": "alarms channel = 1"}]  # as it was

    with caplog.at_level(logging.INFO, logger="meterlink.gateway.api"):
        before = time.time()
        status, acked = call(base, "POST", f"/api/alarms/{leak['id']}/ack",
                             {"note": "  plumber called  "})
    assert status == 200, acked
    assert before <= acked["acked_at"] <= time.time()
    assert acked == {**leak, "acked_at": acked["acked_at"], "acked_by": "api-token",
                     "ack_note": "plumber called"}
    events = [r for r in caplog.records if r.getMessage() == "alarm_acknowledged"]
    assert [e.meterlink_fields for e in events] == [
        {"id": leak["id"], "node": "n1", "alarm": "leak", "by": "api-token"}]
    assert "t0ken" not in caplog.text
    # still active, so still needing attention; acknowledged, so no longer "unacked"
    assert ids(base, "?state=attention") == every
    assert ids(base, "?state=unacked") == every[1:]

    status, again = call(base, "POST", f"/api/alarms/{leak['id']}/ack", {"note": "me too"})
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(acked["acked_at"]))
    assert (status, again) == (409, {"error": f"alarm {leak['id']} (n1 leak) was "
                                              f"acknowledged already, by api-token at {at}"})
    assert call(base, "POST", "/api/alarms/999/ack", {"note": "x"}) == \
        (404, {"error": "no alarm 999 in the alarm log"})
    # a cleared alarm is acknowledged the same way; the note is optional (no body at all)
    n2 = call(base, "GET", "/api/alarms/log?node=n2")[1][0]
    status, done = call(base, "POST", f"/api/alarms/{n2['id']}/ack")
    assert status == 200 and (done["acked_by"], done["ack_note"]) == ("api-token", None)
    assert ids(base, "?state=attention") == [("n1", "leak"), ("n0", "leak")]

    bad = [("POST", f"/api/alarms/{leak['id']}/ack", {"note": 5},
            "note: Input should be a valid string (got 5)"),
           ("POST", f"/api/alarms/{leak['id']}/ack", {"nope": "x"},
            "nope: Extra inputs are not permitted"),
           ("POST", f"/api/alarms/{leak['id']}/ack", {"note": "x" * 501},
            "note: String should have at most 500 characters"),
           ("POST", "/api/alarms/0/ack", {}, "alarm: Input should be greater than or equal "
                                            "to 1"),
           ("POST", "/api/alarms/abc/ack", {}, "alarm: Input should be a valid integer"),
           ("GET", "/api/alarms/log?state=closed", None, "state: String should match pattern"),
           ("GET", "/api/alarms/log?limit=0", None, "limit: Input should be greater than"),
           ("GET", "/api/alarms/log?node=N!", None, "node: String should match pattern"),
           ("GET", "/api/alarms/log?stat=open", None, "stat: unknown query parameter")]
    for method, path, body, message in bad:
        status, reply = call(base, method, path, body)
        assert status == 400 and reply["error"].startswith(message), (path, body, reply)
    status, reply = call(base, "POST", f"/api/alarms/{leak['id']}/ack", raw=b"{note")
    assert status == 400 and reply["error"].startswith("body is not JSON"), reply
    assert ids(base, "?node=-gateway") == []


def login(base: str, user: str, secret: str) -> urllib.request.OpenerDirector:
    import http.cookiejar

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
        http.cookiejar.CookieJar()))
    with opener.open(f"{base}/login?next=/alarms", timeout=10) as reply:
        csrf = re.search(r'name="csrf" value="([^"]+)"', reply.read().decode()).group(1)
    body = urllib.parse.urlencode({"csrf": csrf, "user": user, "token": secret,
                                   "next": "/alarms"}).encode()
    with opener.open(f"{base}/login", data=body, timeout=10) as reply:
        assert reply.url == f"{base}/alarms"
    return opener


def test_the_page_form_acknowledges_as_the_logged_in_operator(served):
    from gateway.users import Users, users_path

    gw, _, base = served
    Users(users_path(gw.config)).add("ana", "correct horse battery")
    leak = call(base, "GET", "/api/alarms/log?node=n1")[1][0]
    # anonymous: to the login page, and no data
    with urllib.request.urlopen(f"{base}/alarms", timeout=10) as reply:
        assert reply.url == f"{base}/login?next=/alarms"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/dash/alarms.json", timeout=10)
    assert refused.value.code == 401
    req = urllib.request.Request(f"{base}/alarms/{leak['id']}/ack", data=b"csrf=x&note=y")
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.url == f"{base}/login?next=/alarms"

    opener = login(base, "ana", "correct horse battery")
    with opener.open(f"{base}/dash/alarms.json", timeout=10) as reply:
        data = json.loads(reply.read())
    # n0's leak cleared a week ago, but nobody acknowledged it: it still needs attention
    assert [(a["node"], a["alarm"]) for a in data["attention"]] == [
        ("n1", "leak"), ("n2", "low_battery"), ("n0", "leak")]
    assert data["recent"] == [] and data["cut"] == {"attention": False, "recent": False}
    with opener.open(f"{base}/alarms", timeout=10) as reply:
        html = reply.read().decode()
    csrf = re.search(r'data-csrf="([^"]+)"', html).group(1)
    assert 'id="alarms-data"' in html and "<script>" not in html
    ack = f"{base}/alarms/{leak['id']}/ack"
    with pytest.raises(urllib.error.HTTPError) as forged:
        opener.open(ack, data=b"csrf=forged&note=x", timeout=10)
    assert forged.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as long_note:
        opener.open(ack, data=urllib.parse.urlencode(
            {"csrf": csrf, "note": "x" * 501}).encode(), timeout=10)
    assert long_note.value.code == 400 and "at most 500" in long_note.value.read().decode()
    body = urllib.parse.urlencode({"csrf": csrf, "note": "shut the valve, ticket 4411"})
    with opener.open(ack, data=body.encode(), timeout=10) as reply:
        assert reply.url == f"{base}/alarms"  # 303 back to the page
    row = call(base, "GET", "/api/alarms/log?node=n1")[1][0]
    assert (row["acked_by"], row["ack_note"]) == ("ana", "shut the valve, ticket 4411")
    with pytest.raises(urllib.error.HTTPError) as twice:
        opener.open(ack, data=body.encode(), timeout=10)
    assert twice.value.code == 409
    assert "acknowledged already, by ana at" in twice.value.read().decode()
    with pytest.raises(urllib.error.HTTPError) as unknown:
        opener.open(f"{base}/alarms/999/ack", data=body.encode(), timeout=10)
    assert unknown.value.code == 404


# ---- in a browser ----------------------------------------------------------------------------

@pytest.mark.slow
def test_an_alarm_appears_live_and_is_acknowledged_in_chromium(tmp_path, broker, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from gateway_support import GatewayProcess, publish, wait_for

    note = "Plumber on the way; main valve closed"
    with GatewayProcess(tmp_path / "gw", broker) as gw:
        gw.wait_subscribed()
        now = int(time.time())
        publish(broker, [reading("n2", 1, now - 240, mv=3020),  # low battery: active
                         reading("n3", 1, now - 600, alarms=LEAK),  # a leak that came and went
                         reading("n3", 2, now - 420, alarms=0),
                         reading("n4", 1, now - 900, alarms=BACKFLOW),  # and was acknowledged
                         reading("n4", 2, now - 840, alarms=0)])
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        wait_for(lambda: len(gw.api("/api/alarms/log")[1]) == 3, 30, "the first alarms",
                 lambda: gw.log()[-2000:])
        n4 = gw.api("/api/alarms/log?node=n4")[1][0]
        assert gw.api(f"/api/alarms/{n4['id']}/ack", "POST",
                      {"note": "check valve replaced"})[0] == 200
        url = gw.url
        wait = WebDriverWait(browser, WAIT_S)

        # anonymous: to the login page, and back to /alarms after it
        browser.get(f"{url}/alarms")
        assert browser.current_url == f"{url}/login?next=/alarms"
        browser.find_element(By.ID, "token").send_keys(gw.token)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: d.current_url == f"{url}/alarms")

        def rows(which: str) -> list[tuple[str, list[str]]]:
            """(alarm id, cell texts) of a table's rows in their order, read at one instant:
            the rows can be redrawn by a poll between two reads from here."""
            return [tuple(r) for r in browser.execute_script(
                "return Array.from(document.querySelectorAll(arguments[0]),"
                "  r => [r.dataset.id, Array.from(r.cells, c => c.innerText.trim())]);",
                f"#{which} tbody tr")]

        def shown(which: str) -> list[list[str]]:
            return [cells for _, cells in rows(which)]

        def row(alarm_id: int) -> list[str]:
            return dict(rows("attention")).get(str(alarm_id), [""] * 6)

        # (raised_at is when the gateway received the reading: these came together)
        wait.until(lambda d: sorted(r[:2] for r in shown("attention")) ==
                   [["n2", "low_battery"], ["n3", "leak"]])
        n2, n3 = sorted(shown("attention"))
        assert n2[4] == "active" and n3[4].endswith("ago") and n2[5] == "Acknowledge"
        [n4_row] = shown("recent")
        assert n4_row[:3] == ["n4", "backflow", "alarms channel = 2"]
        assert n4_row[5].startswith("api-token · ") and \
            n4_row[5].endswith("check valve replaced")

        # a leak arrives while the page is open: shown without a reload
        browser.execute_script("window.notReloaded = true")
        publish(broker, [reading("n1", 1, int(time.time()), alarms=LEAK)])
        wait.until(lambda d: ["n1", "leak"] in [r[:2] for r in shown("attention")])
        leak = gw.api("/api/alarms/log?node=n1")[1][0]
        field = browser.find_element(
            By.CSS_SELECTOR, f'#attention tr[data-id="{leak["id"]}"] input[name=note]')
        raised = browser.find_element(
            By.CSS_SELECTOR, f'#attention tr[data-id="{leak["id"]}"] td:nth-child(4) span')
        assert raised.text.endswith("s ago") and raised.get_attribute("title")
        field.send_keys(note[:20])
        # another alarm comes while the operator types: the rows move, the note stays
        publish(broker, [reading("n1", 2, int(time.time()), alarms=LEAK | BACKFLOW)])
        wait.until(lambda d: ["n1", "backflow"] in [r[:2] for r in shown("attention")])
        # the same element, still in the page, with what was typed and the focus
        assert field.get_attribute("value") == note[:20]
        assert browser.execute_script("return document.activeElement") == field
        field.send_keys(note[20:])
        assert browser.execute_script("return window.notReloaded") is True

        before = time.time()
        browser.find_element(
            By.CSS_SELECTOR, f'#attention tr[data-id="{leak["id"]}"] form.ack button').click()
        wait.until(lambda d: row(leak["id"])[5].startswith("api-token · "))
        shown_leak = row(leak["id"])
        assert shown_leak[4] == "active" and shown_leak[5].endswith(note)
        got = gw.api("/api/alarms/log?node=n1&state=all")[1]
        acked = next(a for a in got if a["id"] == leak["id"])
        assert (acked["acked_by"], acked["ack_note"]) == ("api-token", note)
        assert before - 1 <= acked["acked_at"] <= time.time()
        assert "event=alarm_acknowledged" in gw.log() and gw.token not in gw.log()

        images = IMAGES if os.environ.get("METERLINK_DOC_IMAGES") == "1" else tmp_path
        images.mkdir(parents=True, exist_ok=True)
        browser.set_window_size(1280, 720)
        browser.save_screenshot(str(images / "dashboard-alarms.png"))
