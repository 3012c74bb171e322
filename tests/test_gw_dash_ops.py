"""The dashboard's operations pages (gateway/dashboard/operations.py): quarantine, dead letters
and commands.

In-process and without a browser (the API and its pages on a loopback port, over a real
outbox; messages fed through the real ingest with `Gateway.handle_message`): anonymous visitors
are sent to the login page, a POST without the session's CSRF token is refused, the quarantine
lists a rejected message with its reason and offset (filtered, paged by id), a dead letter
replayed through its form is queued again, and the command form's problems each name their
field.

In a real headless Chromium (slow): a real gateway process on a real Mosquitto, and a node
running its real firmware in the MicroPython unix port (host_tools.vboard). A command sent from
the commands page is answered by the node, and the answer appears as the page polls, without
a reload; a dead letter the platform refused is replayed from its page. It takes the
screenshots docs/operations.md shows (METERLINK_DOC_IMAGES=1: into docs/images/, as
tests/test_gw_dashboard.py does).
"""

from __future__ import annotations

import http.cookiejar
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
from gateway_support import GatewayProcess, Recorder, publish, wait_for

TOKEN = "t0ken"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Visitor:
    """A browser without the browser: a cookie jar, redirects not followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect())

    def request(self, path: str, fields=None) -> tuple[int, dict, str]:
        """(status, headers, body text) of a GET, or of a POST of form `fields` (pairs)."""
        data = None if fields is None else urllib.parse.urlencode(fields).encode()
        try:
            with self.opener.open(f"{self.base}{path}", data=data, timeout=10) as reply:
                return reply.status, dict(reply.headers), reply.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode("utf-8", "replace")

    def page(self, path: str) -> str:
        status, _, text = self.request(path)
        assert status == 200, (path, status, text[:300])
        return text

    def csrf(self, path: str = "/commands") -> str:
        return re.search(r'name="csrf" value="([^"]+)"', self.page(path)).group(1)

    def login(self) -> "Visitor":
        csrf = re.search(r'name="csrf" value="([^"]+)"', self.request("/login")[2]).group(1)
        status, headers, _ = self.request("/login", [("csrf", csrf), ("token", TOKEN),
                                                     ("next", "/commands")])
        assert status == 303 and headers["location"] == "/commands", (status, headers)
        return self

    def follow(self, reply: tuple[int, dict, str]) -> str:
        """The page a 303 points to."""
        status, headers, text = reply
        assert status == 303, (status, text[:300])
        return self.page(headers["location"].split("#")[0])


def flash(html: str) -> str:
    found = re.search(r'<p class="flash[^"]*" id="flash"[^>]*>([^<]*)</p>', html)
    return found.group(1) if found else ""


def unescape(html: str) -> str:
    import html as html_lib
    return html_lib.unescape(html)


@pytest.fixture
def site(tmp_path):
    """(Gateway, ApiServer, base URL) over an outbox with three registered nodes (n1 and n2 in
    group roof), the file sink configured, no broker."""
    from gateway.webapp import ApiServer
    from gateway.config import parse_config
    from gateway.daemon import Gateway

    config = parse_config({"sinks": {"file": {}}, "api": {"port": 0, "token": TOKEN},
                           "gateway": {"ack_timeout_s": 30}}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    with gw.box.transaction():
        for node, group in (("n1", "roof"), ("n2", "roof"), ("n3", None)):
            gw.box.db.execute("INSERT INTO nodes(node, registered, board, sensors, grp, "
                              "interval_s) VALUES (?, 1, 'esp32-devkitc', '[]', ?, 60)",
                              (node, group))
    server = ApiServer(gw)
    server.start()
    try:
        yield gw, server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        gw.box.close()


def dead_letter(gw, sink: str, items: int) -> int:
    """A dead letter of `items` readings for `sink`, as the batcher leaves one (the row
    test_gw_openapi.py writes)."""
    now = time.time()
    body = [{"kind": "reading", "node": "w1", "seq": seq,
             "body": [{"n": "w1:water_volume", "u": "m3", "v": 12.5 + seq, "t": int(now)}]}
            for seq in range(1, items + 1)]
    with gw.box.transaction():
        cur = gw.box.db.execute(
            "INSERT INTO deadletters(at, sink, batch_key, status, reply, body, reason) "
            "VALUES (?, ?, 'k1', 400, ?, ?, 'rejected')",
            (now - 300, sink, '{"error":"unknown device urn:ngsi-ld:Device:w1"}',
             json.dumps(body)))
    return cur.lastrowid


# ---- in-process, without a browser -------------------------------------------------------------

def test_the_pages_send_a_visitor_not_logged_in_to_the_login_page(site):
    gw, _, base = site
    letter = dead_letter(gw, "file", 1)
    anonymous = Visitor(base)
    for path in ("/quarantine?reason=cbor", "/deadletters", "/commands"):
        status, headers, _ = anonymous.request(path)
        assert status == 303, path
        assert headers["location"] == "/login?next=" + urllib.parse.quote(path, safe="/"), \
            headers
    assert anonymous.request("/dash/downlinks.json")[0] == 401
    assert anonymous.request("/quarantine/1/payload")[0] == 401
    # a POST: to the login page too, and nothing done
    for path in (f"/deadletters/{letter}/replay", "/commands"):
        status, headers, _ = anonymous.request(path, [("csrf", "x"), ("to", "node"),
                                                      ("node", "n1"), ("what", "cmd"),
                                                      ("cmd", "diag"), ("timeout_s", "5")])
        assert status == 303 and headers["location"].startswith("/login?next=%2F"), path
    assert gw.box.db.execute("SELECT replayed FROM deadletters").fetchone()[0] == 0
    assert gw.box.db.execute("SELECT COUNT(*) FROM downlinks").fetchone()[0] == 0


def test_a_post_without_the_session_csrf_token_is_refused(site):
    gw, _, base = site
    letter = dead_letter(gw, "file", 1)
    visitor = Visitor(base).login()
    command = [("to", "node"), ("node", "n1"), ("what", "cmd"), ("cmd", "diag"),
               ("args", "{}"), ("timeout_s", "5")]
    for fields in ([], [("csrf", "not-the-session-s")]):
        status, _, text = visitor.request(f"/deadletters/{letter}/replay", fields)
        assert status == 403 and "csrf" in text
        status, _, text = visitor.request("/commands", fields + command)
        assert status == 403 and "csrf" in text
    # another visitor's token is no better
    other = Visitor(base).login().csrf()
    assert visitor.request("/commands", [("csrf", other)] + command)[0] == 403
    assert gw.box.db.execute("SELECT replayed FROM deadletters").fetchone()[0] == 0
    assert gw.box.db.execute("SELECT COUNT(*) FROM downlinks").fetchone()[0] == 0


def test_the_quarantine_lists_a_rejected_message_with_its_reason_and_offset(site, monkeypatch):
    from gateway.dashboard import operations

    gw, _, base = site
    now = int(time.time())
    newer_format = cbor2.dumps([2, 1, now, {1: 2000}])
    assert gw.handle_message("m/n1/r", newer_format, received_at=now) == "rejected"
    long_unknown = cbor2.dumps([1, 2, now, {1: 2000, 4: 10, 7: 3700, 8: -60, 99: 1}])
    assert gw.handle_message("m/n2/r", long_unknown, received_at=now) == "rejected"
    assert gw.handle_message("m/n3/r", b"", received_at=now) == "rejected"
    [(version_id, offset, detail)] = gw.box.db.execute(
        "SELECT id, offset, detail FROM quarantine WHERE reason='version'").fetchall()
    assert offset == 1
    visitor = Visitor(base).login()

    html = visitor.page("/quarantine")
    rows = re.findall(r'<tr data-id="(\d+)"', html)
    assert rows == sorted(rows, key=int, reverse=True) and len(rows) == 3  # newest first
    row = unescape(re.search(rf'<tr data-id="{version_id}".*?</tr>', html, re.S).group(0))
    assert ">m/n1/r<" in row and ">version<" in row and '<td class="num">1</td>' in row
    assert detail in row and "s ago" in row and " UTC" in row  # human time, exact as title
    # the payload in hex, the byte at the offset marked (short: no "see all" needed)
    assert f"{newer_format[:1].hex()} <mark>02</mark> {newer_format[2:].hex(' ')}" in row
    # a long payload: shortened, all of it when opened, and a download of the bytes
    unknown = unescape(re.search(r'<tr data-id="\d+"[^>]*>(?:(?!</tr>).)*unknown_channel.*?'
                                 r'</tr>', html, re.S).group(0))
    assert "<details>" in unknown and f"{len(long_unknown)} B" in unknown
    qid = re.search(r'/quarantine/(\d+)/payload', unknown).group(1)
    status, headers, _ = visitor.request(f"/quarantine/{qid}/payload")
    assert status == 200 and "attachment" in headers["content-disposition"]
    with visitor.opener.open(f"{base}/quarantine/{qid}/payload", timeout=10) as reply:
        assert reply.read() == long_unknown
    assert ">empty<" in html  # the empty payload

    # filtered by reason
    html = visitor.page("/quarantine?reason=version")
    assert re.findall(r'<tr data-id="(\d+)"', html) == [str(version_id)]
    assert '<option value="version" title="a format version other than 1" selected>' in html
    assert "No message quarantined as <code>time</code>" in visitor.page("/quarantine?reason=time")

    # paged by id: "older" continues below the last row shown
    monkeypatch.setattr(operations, "PAGE_ROWS", 2)
    html = visitor.page("/quarantine")
    first = re.findall(r'<tr data-id="(\d+)"', html)
    older = unescape(re.search(r'href="([^"]+)" id="older"', html).group(1))
    assert older == f"/quarantine?before={first[-1]}"
    html = visitor.page(older)
    assert re.findall(r'<tr data-id="(\d+)"', html) == [str(version_id)]
    assert 'id="older"' not in html and 'id="newest"' in html
    assert visitor.request("/quarantine?before=0")[0] == 400


def test_a_dead_letter_replayed_through_its_form_is_queued_again(site, caplog):
    gw, _, base = site
    letter = dead_letter(gw, "file", 2)
    visitor = Visitor(base).login()
    html = visitor.page("/deadletters")
    row = unescape(re.search(rf'<tr data-id="{letter}".*?</tr>', html, re.S).group(0))
    assert ">file<" in row and ">rejected<" in row and '<td class="num">400</td>' in row
    assert "unknown device urn:ngsi-ld:Device:w1" in row and "2 items: w1 #1, w1 #2" in row
    assert '"w1:water_volume"' in row  # the body, opened
    assert ">Replay</button>" in row and 'name="again"' not in row
    csrf = re.search(r'name="csrf" value="([^"]+)"', row).group(1)
    back = "/deadletters?sink=file"
    assert gw.box.backlog("file")[0] == 0

    caplog.set_level(logging.INFO, logger="meterlink.gateway.dashboard")
    reply = visitor.request(f"/deadletters/{letter}/replay", [("csrf", csrf), ("back", back)])
    assert reply[1]["location"] == f"{back}#letter-{letter}"
    html = visitor.follow(reply)
    assert flash(html) == f"Dead letter {letter}: 2 item(s) queued again for file."
    assert gw.box.backlog("file")[0] == 2  # the items, pending for the file sink again
    [event] = [r for r in caplog.records if r.getMessage() == "dashboard_replayed"]
    assert event.meterlink_fields["user"] == "api-token"
    assert event.meterlink_fields["items"] == 2
    row = re.search(rf'<tr data-id="{letter}".*?</tr>', html, re.S).group(0)
    assert ">Replay again</button>" in row and 'name="again" value="1"' in row
    assert "data-confirm=" in row
    assert flash(visitor.page(back)) == ""  # said once

    # replayed before: refused without `again` (409), sent once more with it
    html = visitor.follow(visitor.request(f"/deadletters/{letter}/replay", [("csrf", csrf)]))
    assert flash(html).startswith(f"Dead letter {letter} was not replayed: dead letter "
                                  f"{letter} was replayed 1 time(s) already")
    html = visitor.follow(visitor.request(f"/deadletters/{letter}/replay",
                                          [("csrf", csrf), ("again", "1")]))
    assert "2 item(s) queued again for file" in flash(html)
    assert gw.box.db.execute("SELECT replayed FROM deadletters").fetchone()[0] == 2
    html = visitor.follow(visitor.request("/deadletters/999/replay", [("csrf", csrf)]))
    assert flash(html) == "Dead letter 999 was not replayed: no dead letter 999"
    # a "back" elsewhere is not followed
    reply = visitor.request(f"/deadletters/{letter}/replay",
                            [("csrf", csrf), ("again", "1"), ("back", "https://evil.example/")])
    assert reply[1]["location"] == f"/deadletters#letter-{letter}"


def test_the_command_form_names_the_field_of_each_problem(site):
    gw, _, base = site
    visitor = Visitor(base).login()
    html = visitor.page("/commands")
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    assert re.findall(r'<select id="group".*?</select>', html, re.S)[0].count("<option") == 2

    def send(**fields) -> tuple[int, str]:
        base_fields = {"to": "node", "node": "n1", "what": "cmd", "cmd": "diag",
                       "args": "{}", "timeout_s": "30"}
        pairs = [("csrf", csrf)] + [(k, v) for k, v in {**base_fields, **fields}.items()
                                    if not isinstance(v, list)]
        pairs += [("nodes", n) for n in fields.get("nodes", [])]
        status, _, text = visitor.request("/commands", pairs)
        return status, unescape(text)

    cases = [
        ({"args": '{"s": 300,}'}, "args",
         "args: not JSON: Expecting property name enclosed in double quotes at line 1, "
         "column 11"),
        ({"args": '{\n  "s": 300\n  "sensor": 0\n}'}, "args",
         "args: not JSON: Expecting ',' delimiter at line 3, column 3"),
        ({"args": "[1, 2]"}, "args", "args: must be a JSON object {...}: got an array"),
        ({"cmd": "interval", "args": '{"s": 1.5}'}, "args",
         "args: arguments.s: floats are not allowed on the wire (use scaled integers)"),
        ({"cmd": "selfdestruct"}, "cmd", "cmd: unknown command 'selfdestruct' (known: read, "
                                         "interval, flush, reboot, diag, time, cred, replay)"),
        ({"node": "n9"}, "node", "node: 'n9' is not in the registry"),
        ({"node": ""}, "node", "node: choose a node"),
        ({"to": "nodes"}, "nodes", "nodes: choose at least one node"),
        ({"to": "group", "group": "cellar"}, "group",
         "group: 'cellar' is no group of the registry"),
        ({"what": "config", "patch": "", "version": "2"}, "patch",
         'patch: required: a JSON object such as {"key": 1}'),
        ({"what": "config", "patch": '{"sensors": []}', "version": "two"}, "version",
         "version: must be an integer 1-2147483647: got 'two'"),
        ({"timeout_s": "0"}, "timeout_s", "timeout_s: must be a number 1-3600: got '0'"),
    ]
    for fields, name, message in cases:
        status, html = send(**fields)
        assert status == 400, (fields, html[:500])
        shown = re.search(rf'<p class="field-error" id="error-{name}">([^<]*)</p>', html)
        assert shown and shown.group(1) == message, (fields, shown and shown.group(1))
        assert f'id="{name}"' in html and "Nothing was sent: one problem." in html
        assert re.search(rf'id="{name}"[^>]*aria-invalid="true"', html) or name == "nodes"
    # two problems at once; what was typed is kept
    status, html = send(what="config", patch='{"interval_s": }', version="0")
    assert status == 400 and "Nothing was sent: 2 problems." in html
    assert ">{\"interval_s\": }</textarea>" in html and 'id="what-config" name="what" ' \
        'value="config" checked' in html
    assert gw.box.db.execute("SELECT COUNT(*) FROM downlinks").fetchone()[0] == 0

    # a good one is sent at once (nothing answers here) and listed as waiting
    started = time.monotonic()
    reply = visitor.request("/commands", [("csrf", csrf), ("to", "nodes"), ("nodes", "n1"),
                                          ("nodes", "n3"), ("what", "cmd"),
                                          ("cmd", "interval"), ("args", '{"s": 300}'),
                                          ("timeout_s", "30")])
    assert time.monotonic() - started < 5
    assert reply[1]["location"] == "/commands?to=nodes&what=cmd&cmd=interval&nodes=n1&nodes=n3"
    html = visitor.follow(reply)
    assert flash(html) == "Sent interval to 2 nodes: their answers appear below."
    # the next command goes to the same nodes unless the operator chooses others
    chosen = re.search(r'<select id="nodes".*?</select>', html, re.S).group(0)
    assert re.findall(r'<option value="(\w+)" selected>', chosen) == ["n1", "n3"]
    assert 'id="to-nodes" name="to" value="nodes" checked' in html
    data = json.loads(unescape(re.search(r'id="downlinks-data">(.*?)</script>', html,
                                         re.S).group(1)))
    assert [(d["node"], d["kind"], d["result"], d["request"]["s"])
            for d in data["downlinks"]] == [("n3", "interval", "waiting", 300),
                                           ("n1", "interval", "waiting", 300)]
    ids = json.loads(re.search(r'id="flash-ids">(.*?)</script>', html).group(1))
    assert sorted(ids) == sorted(d["request_id"] for d in data["downlinks"])


def test_the_downlinks_show_each_node_s_answer(site):
    """The ack comes in through the real ingest; the page's poll and the API show it."""
    gw, server, base = site
    visitor = Visitor(base).login()
    csrf = visitor.csrf()
    for group_or_node in ([("to", "group"), ("group", "roof")], [("to", "node"), ("node", "n3")]):
        status, _, _ = visitor.request("/commands", [("csrf", csrf), *group_or_node,
                                                     ("what", "config"),
                                                     ("patch", '{"sensors": []}'),
                                                     ("version", "4"), ("timeout_s", "1")])
        assert status == 303
    rid = {r["node"]: r["request_id"] for r in server.api.downlinks(None, 10)}
    now = time.time()
    assert gw.handle_message("m/n1/a", cbor2.dumps({"id": rid["n1"], "cmd": "config",
                                                    "ok": True, "cv": 4}),
                             received_at=now) == "ack"
    assert gw.handle_message("m/n2/a", cbor2.dumps({
        "id": rid["n2"], "cmd": "config", "ok": False,
        "err": "sensors[0].interval_s must be an integer 1-86400: got 0", "cv": 3}),
        received_at=now) == "ack"
    time.sleep(1.1)  # n3 never answers: its deadline passes
    status, _, text = visitor.request("/dash/downlinks.json?limit=5")
    got = {d["node"]: d for d in json.loads(text)["downlinks"]}
    assert status == 200 and {n: d["result"] for n, d in got.items()} == \
        {"n1": "ok", "n2": "failed", "n3": "timeout"}
    assert got["n1"]["ack"] == {"cmd": "config", "cv": 4}
    assert got["n2"]["ack"]["err"].startswith("sensors[0].interval_s must be")
    assert got["n1"]["request"]["patch"] == {"sensors": []} and got["n1"]["request"]["v"] == 4
    # the same through the API, with the bearer token
    req = urllib.request.Request(f"{base}/api/downlinks?node=n2&limit=1",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        [row] = json.loads(reply.read())
    assert row["result"] == "failed" and row["request_id"] == rid["n2"]
    assert visitor.request("/dash/downlinks.json?limit=0")[0] == 400


# ---- in a real browser, with the real firmware -------------------------------------------------

NODE = "well-03"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_command_round_trips_to_the_real_firmware_in_chromium(tmp_path, broker, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from host_tools.vboard import VirtualNode

    platform = Recorder()  # refuses w1's readings until "fixed": a dead letter to replay
    fixed, accepted = [False], []

    def decide(path, headers, body):
        records = json.loads(body)
        for unknown in ("w2",) if fixed[0] else ("w1", "w2"):
            if any(r.get("node") == unknown for r in records):
                return 400, b'{"error":"unknown device urn:ngsi-ld:Device:%s"}' % \
                    unknown.encode(), {}
        accepted.extend(r.get("seq") for r in records if r.get("node") == "w1")
        return 200, b"{}", {}
    platform.decide = decide
    node = VirtualNode(tmp_path / "node", node_id=NODE, broker=broker, interval_s=60)
    gw = GatewayProcess(tmp_path / "gw", broker, extra=(
        f'[sinks.http]\nurl = "{platform.url}"\ngzip = false\nbatch_max_age_s = 0.1\n'
        'events = false\n'))
    images = IMAGES if os.environ.get("METERLINK_DOC_IMAGES") == "1" else tmp_path
    images.mkdir(parents=True, exist_ok=True)
    try:
        gw.wait_subscribed()
        node.start()  # boots while the dead letter and the quarantine are made
        now = int(time.time())
        publish(broker, [("m/w1/r", cbor2.dumps([1, 1, now, {4: 52310, 7: 3610}])),
                         ("m/w1/r", cbor2.dumps([2, 2, now, {4: 52320}])),
                         ("m/w7/r", bytes.fromhex("8401051a") + now.to_bytes(4, "big") +
                          bytes.fromhex("a1186301")),
                         ("m/w7/r", cbor2.dumps([1, 5, now, {1: 2150, 2: 4820, 3: 101325,
                                                            7: 3590, 8: -67, 99: 1}])),
                         ("m/W7/r", cbor2.dumps([1, 6, now, {1: 2150}]))])
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        [letter] = wait_for(lambda: gw.api("/api/deadletters")[1], 20, "the dead letter",
                            gw.log)
        publish(broker, [("m/w2/r", cbor2.dumps([1, 1, now, {4: 1200}]))])  # refused for good
        wait_for(lambda: len(gw.api("/api/deadletters")[1]) == 2, 20, "the second dead letter")
        assert gw.api(f"/api/nodes/{NODE}", "PUT", {
            "board": "esp32-devkitc", "sensors": [], "interval_s": 60, "group": "wells"})[0] \
            in (200, 201)
        url, wait = gw.url, WebDriverWait(browser, WAIT_S)

        # log in; the dead letters: replayed from its page once the platform is fixed
        browser.get(f"{url}/deadletters")
        browser.find_element(By.ID, "token").send_keys(gw.token)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: d.current_url == f"{url}/deadletters")
        fixed[0] = True
        browser.find_element(By.CSS_SELECTOR,
                             f'#letter-{letter["id"]} form.replay button').click()
        wait.until(lambda d: d.find_elements(By.ID, "flash"))
        assert browser.find_element(By.ID, "flash").text == \
            f"Dead letter {letter['id']}: 1 item(s) queued again for http."
        wait_for(lambda: set(accepted) == {1}, 10, "the replayed reading at the platform",
                 lambda: repr(platform.requests) + gw.log()[-3000:])
        assert browser.find_element(
            By.CSS_SELECTOR, f'#letter-{letter["id"]} form.replay button').text == "Replay again"
        browser.set_window_size(1280, 560)
        browser.save_screenshot(str(images / "dashboard-deadletters.png"))

        browser.get(f"{url}/quarantine")
        browser.set_window_size(1280, 700)
        reasons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#quarantine .tag")]
        assert sorted(reasons) == ["topic", "unknown_channel", "unknown_channel", "version"]
        assert browser.find_elements(By.CSS_SELECTOR, "#quarantine mark")
        assert browser.find_element(By.CSS_SELECTOR, "#quarantine code.topic mark").text == "W"
        browser.find_element(By.CSS_SELECTOR, "#quarantine details summary").click()  # all of it
        assert browser.find_element(By.CSS_SELECTOR, "#quarantine code.hex.full").is_displayed()
        browser.save_screenshot(str(images / "dashboard-quarantine.png"))

        # the commands page, once the node is up: a refused command, then diag, answered
        # while the page stays as it is
        wait_for(lambda: gw.api(f"/api/nodes/{NODE}")[1].get("state") == "online", 30,
                 "the node online", lambda: node.console()[-3000:] + gw.log()[-2000:])
        browser.get(f"{url}/commands")

        def send(cmd: str, args: str) -> str:
            Select(browser.find_element(By.ID, "node")).select_by_value(NODE)
            Select(browser.find_element(By.ID, "cmd")).select_by_value(cmd)
            box = browser.find_element(By.ID, "args")
            box.clear()
            box.send_keys(args)
            browser.find_element(By.ID, "send").click()
            text = wait.until(lambda d: (t := d.execute_script(  # the new page's, not the old
                "const f = document.getElementById('flash'); return f ? f.textContent : '';"))
                and t.startswith(f"Sent {cmd} ") and t)
            return re.search(r"\(request (gw-[0-9a-f]+)\)", text).group(1)

        def answer(rid: str) -> tuple[str, str]:
            return browser.execute_script(
                "const r = document.querySelector(`#downlinks tr[data-request='${arguments[0]}']`);"
                "return r ? [r.dataset.result, r.cells[5].innerText] : ['', ''];", rid)

        refused = send("interval", '{"s": 0}')
        diag = send("diag", "{}")
        browser.execute_script("window.notReloaded = true")
        assert answer(diag)[0] in ("waiting", "ok")
        assert Select(browser.find_element(By.ID, "node")).first_selected_option.text \
            .startswith(NODE)  # kept from the last send
        wait.until(lambda d: answer(diag)[0] == "ok")
        assert browser.execute_script("return window.notReloaded") is True
        result, shown = answer(refused)
        assert result == "failed" and shown.startswith("refused s must be an integer 1-86400"), \
            shown
        browser.set_window_size(1280, 800)
        browser.save_screenshot(str(images / "dashboard-commands.png"))
        assert "Traceback" not in gw.log()
    finally:
        node.stop()
        gw.stop()
        platform.close()
