"""The node page's additions and the fleet map: a node's status history (`node_log`, written by
the registry on a change only), its consumption per day, its gaps; the map's Leaflet files, its
tile server in the fleet page's Content-Security-Policy alone, and `[dashboard]` in the config.

In-process (fast): the real ingest path (`Gateway.handle_message`), the registry, the API and
the dashboard's routes over a real outbox. One browser test (`slow`): a real gateway process on
a real Mosquitto, driven in Debian's headless chromium like tests/test_gw_dashboard.py, which
saves dashboard-node-meter.png and dashboard-map.png (into docs/images/ with
METERLINK_DOC_IMAGES=1):

    METERLINK_DOC_IMAGES=1 .venv/bin/python -m pytest -q tests/test_gw_dash_node.py -k chromium
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

import cbor2
import pytest

from dashboard_support import IMAGES, WAIT_S, logged_in, table
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import ConfigError
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway_support import GatewayProcess, publish, wait_for

T0 = 1763712000
DAY = 86400
TOKEN = "t0ken"


def status(node: str, **fields) -> tuple[str, bytes]:
    return f"m/{node}/s", cbor2.dumps(fields)


def meter(node: str, seq: int, t: int, litres: int) -> tuple[str, bytes]:
    """A water meter's reading: its total (key 4, water_volume, litres on the wire)."""
    return f"m/{node}/r", cbor2.dumps([1, seq, t, {4: litres}])


def make_gateway(tmp_path, **sections) -> Gateway:
    config = parse_config({"sinks": {"file": {}, "history": {}},
                           "api": {"port": 0, "token": TOKEN}, **sections}, base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    return gw


def feed(gw: Gateway, messages: list[tuple[str, bytes]], t: float = T0) -> None:
    for i, (topic, payload) in enumerate(messages):
        gw.handle_message(topic, payload, received_at=t + i)


def events(gw: Gateway, node: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e["detail"]) for e in gw.box.nodes.events(node, 1000)]


@pytest.fixture
def api(tmp_path, monkeypatch):
    """(start(gw) -> base URL): the API with the dashboard over `gw`'s outbox, on a loopback
    port; stopped at the end."""
    from gateway import dashboard
    from gateway.webapp import ApiServer

    monkeypatch.setattr(dashboard, "LEAFLET_CACHE", tmp_path / "no-leaflet")
    monkeypatch.delenv(dashboard.LEAFLET_ENV, raising=False)
    servers = []

    def start(gw: Gateway) -> str:
        server = ApiServer(gw)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"
    yield start
    for server in servers:
        server.stop()


def get(opener, url) -> tuple[int, Any, str]:
    """(status, headers (any case), body) of a GET through a logged-in opener (or urllib)."""
    try:
        with opener.open(url, timeout=10) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


# ---- the status history --------------------------------------------------------------------

def test_a_status_history_row_per_change_and_none_for_a_repeated_status(tmp_path):
    gw = make_gateway(tmp_path)
    feed(gw, [meter("n1", 1, T0, 10),
              status("n1", on=True, fw="1.3.2", boot=4, q=0, qd=0),
              status("n1", on=True, fw="1.3.2", boot=4, q=0, qd=0),   # the same: nothing
              status("n1", on=True, fw="1.3.2", boot=4, q=3, qd=0),   # health only: nothing
              status("n1", on=False),                                 # its Last Will
              status("n1", on=True, fw="1.3.2", boot=4, q=0, qd=0),   # back, no reboot
              status("n1", on=False, bye="update"),
              status("n1", on=True, fw="1.4.0", boot=5, rst="hard", q=0, qd=0),
              status("n1", on=False, sleep=300, fw="1.4.0", boot=5),  # a battery node's wake
              status("n1", on=True, fw="1.4.0", boot=5),              # cycle: no rows
              status("n1", on=True, fw="1.4.0", boot=8, rst="wdt",
                     safe="3 boots in a row crashed before the node was healthy"),
              status("n1", on=True, fw="1.4.0", boot=9, rst="hard")])
    assert events(gw, "n1") == [
        ("safe_mode_left", None),
        ("reboot", "boot 8 -> 9, reset cause hard"),
        ("safe_mode", "3 boots in a row crashed before the node was healthy"),
        ("reboot", "boot 5 -> 8, reset cause wdt"),
        ("online", "was restarting"),
        ("firmware", "1.3.2 -> 1.4.0"),
        ("reboot", "boot 4 -> 5, reset cause hard"),
        ("restarting", "announced: update"),
        ("online", "was offline"),
        ("offline", "Last Will: the connection dropped"),
        ("online", None),
        ("first_seen", "not registered")]
    # newest first, at the time each message arrived
    assert [e["at"] for e in gw.box.nodes.events("n1", 3)] == [T0 + 11, T0 + 11, T0 + 10]

    # a repeated status costs no query of the history: compared with the cached state
    statements: list[str] = []
    gw.box.db.set_trace_callback(statements.append)
    feed(gw, [status("n1", on=True, fw="1.4.0", boot=9, q=1, qd=0)] * 3, t=T0 + 100)
    gw.box.db.set_trace_callback(None)
    assert statements and not [s for s in statements if "node_log" in s], statements
    assert len(events(gw, "n1")) == 12

    # a gateway restart reloads what it compares with: the same status again writes nothing
    gw.box.close()
    gw = make_gateway(tmp_path)
    feed(gw, [status("n1", on=True, fw="1.4.0", boot=9, q=1, qd=0)], t=T0 + 200)
    assert len(events(gw, "n1")) == 12
    gw.box.close()


def test_retire_reinstate_delete_and_the_bound_per_node(tmp_path, monkeypatch):
    from gateway import registry

    gw = make_gateway(tmp_path)
    with gw.box.transaction():  # registered (provision) before it is heard of
        gw.box.db.execute("INSERT INTO nodes(node, registered, board, sensors, interval_s) "
                          "VALUES ('n2', 1, 'esp32-devkitc', '[]', 60)")
    feed(gw, [meter("n1", 1, T0, 10), status("n2", on=True, fw="1.4.0", boot=1)])
    gw.on_ingest_thread(lambda reg: reg.retire("n1", T0 + 50, "meter replaced, order 88"))
    gw.on_ingest_thread(lambda reg: reg.retire("n1", T0 + 51, "again"))  # retired already
    gw.on_ingest_thread(lambda reg: reg.reinstate("n1", T0 + 60))
    assert events(gw, "n1") == [("reinstated", None), ("retired", "meter replaced, order 88"),
                                ("first_seen", "not registered")]
    assert events(gw, "n2") == [("online", None), ("first_seen", "registered before")]

    # deleting a node (it never sent a reading) deletes its history
    gw.on_ingest_thread(lambda reg: reg.delete("n2"))
    assert events(gw, "n2") == []

    # the newest NODE_LOG_KEEP rows of a node are kept; another node's are untouched
    monkeypatch.setattr(registry, "NODE_LOG_KEEP", 4)
    feed(gw, [status("n1", on=True, fw="1.4.0", boot=b, rst="hard") for b in range(1, 6)],
         t=T0 + 100)
    assert events(gw, "n1") == [("reboot", f"boot {b - 1} -> {b}, reset cause hard")
                                for b in (5, 4, 3, 2)]
    feed(gw, [meter("n3", 1, T0, 10)], t=T0 + 200)
    assert events(gw, "n3") == [("first_seen", "not registered")]
    gw.box.close()


def test_the_api_serves_the_status_history_newest_first(tmp_path, api):
    gw = make_gateway(tmp_path)
    feed(gw, [status("n1", on=True, fw="1.3.2", boot=4), status("n1", on=False),
              status("n1", on=True, fw="1.3.2", boot=5)])
    base = api(gw)

    def call(path: str, token: str | None = TOKEN):
        req = urllib.request.Request(base + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        status, _, body = get(urllib.request.build_opener(), req)
        return status, json.loads(body)

    assert call("/api/nodes/n1/events?limit=2") == (200, [
        {"at": T0 + 2, "event": "online", "detail": "was offline"},
        {"at": T0 + 2, "event": "reboot", "detail": "boot 4 -> 5"}])
    assert len(call("/api/nodes/n1/events")[1]) == 5
    assert call("/api/nodes/nope/events") == (404, {"error": "node 'nope' is not known"})
    assert call("/api/nodes/n1/events?limit=0")[0] == 400
    assert call("/api/nodes/n1/events?limit=0")[1]["error"].startswith("limit:")
    assert call("/api/nodes/n1/events?limt=3") == \
        (400, {"error": "limt: unknown query parameter (known: limit)"})
    assert call("/api/nodes/n1/events", token=None)[0] == 401
    gw.box.close()


# ---- the node page ---------------------------------------------------------------------------

def drain_history(gw: Gateway) -> None:
    """Delivers what waits for the history sink with the real sink (no sink threads here)."""
    box = Outbox(gw.config.outbox.path)
    sink = make_sink(next(s for s in gw.config.sinks if s.name == "history"))
    sink.open()
    while (batch := box.claim_batch("history", max_records=1000, max_bytes=1 << 20)):
        sink.deliver(batch)
        box.confirm(batch)
    sink.close()
    box.close()


def test_the_node_page_shows_consumption_per_day_as_differences_of_totals(tmp_path, api):
    """Totals over three past days (two a day, and one lost reading): each day's use is its
    last total minus the day before's, whatever was lost in between."""
    today = int(time.time()) // DAY * DAY
    d1, d2, d3 = today - 3 * DAY, today - 2 * DAY, today - DAY
    totals = [(1, d1 + 3 * 3600, 1000), (2, d1 + 20 * 3600, 1200),
              (3, d2 + 6 * 3600, 1500), (6, d2 + 22 * 3600, 1930),   # seq 4-5 lost
              (7, d3 + 5 * 3600, 2000), (8, d3 + 23 * 3600, 2310)]
    gw = make_gateway(tmp_path)
    for seq, t, litres in totals:
        gw.handle_message(*meter("w1", seq, t, litres), received_at=t)
    gw.handle_message(*status("w1", on=True, fw="1.4.0", boot=3), received_at=time.time())
    drain_history(gw)
    base = api(gw)
    opener = logged_in(base, TOKEN)

    code, headers, body = get(opener, f"{base}/dash/nodes/w1/consumption.json")
    assert code == 200, body
    got = json.loads(body)
    assert got["days"] == 30 and got["from"] == today - 29 * DAY
    # the last total of a day minus the last of the day before, in m3
    assert [d for d, _ in got["meters"]["water_volume"]] == [d2, d3]
    assert [round(v, 6) for _, v in got["meters"]["water_volume"]] == \
        [round((1930 - 1200) / 1000, 6), round((2310 - 1930) / 1000, 6)]
    # the same as the API's
    req = urllib.request.Request(f"{base}/api/nodes/w1/consumption?channel=water_volume"
                                 f"&from={today - 29 * DAY}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert json.loads(get(urllib.request.build_opener(), req)[2])["days"] == \
        got["meters"]["water_volume"]

    # the page: its parts, the node's gaps and status history in its data
    code, headers, html = get(opener, f"{base}/nodes/w1")
    assert code == 200 and "Consumption per day" in html and 'id="gaps"' in html
    data = json.loads(html.split('id="node-data">', 1)[1].split("</script>", 1)[0])
    assert data["node"]["gaps"] == [[4, 5]] and data["node"]["missing"] == 2
    assert [e["event"] for e in data["events"]] == ["online", "first_seen"]
    polled = json.loads(get(opener, f"{base}/dash/nodes/w1.json")[2])
    assert polled["events"] == data["events"]
    # a node without a meter total has no consumption
    gw.handle_message("m/t1/r", cbor2.dumps([1, 1, d3, {1: 2000}]), received_at=d3)
    assert json.loads(get(opener, f"{base}/dash/nodes/t1/consumption.json")[2])["meters"] == {}
    gw.box.close()


# ---- the fleet map: Leaflet, the tiles, the CSP -------------------------------------------

def test_the_map_tiles_are_allowed_on_the_fleet_page_only(tmp_path, api, monkeypatch):
    from gateway.dashboard import HEADERS

    gw = make_gateway(tmp_path)
    feed(gw, [meter("w1", 1, T0, 10)])
    base = api(gw)
    opener = logged_in(base, TOKEN)
    code, headers, html = get(opener, f"{base}/")
    csp = headers["Content-Security-Policy"]
    assert "img-src 'self' data: https://tile.openstreetmap.org;" in csp
    assert csp.replace(" https://tile.openstreetmap.org", "") == \
        HEADERS["Content-Security-Policy"]
    for page in ("/nodes/w1", "/dash/nodes.json", "/dash/nodes/w1.json"):
        assert get(opener, base + page)[1]["Content-Security-Policy"] == \
            HEADERS["Content-Security-Policy"], page
    assert 'data-tiles="https://tile.openstreetmap.org/{z}/{x}/{y}.png"' in html

    # without Leaflet: not linked, the page says how to install it, its files are 404
    assert "leaflet.js\"" not in html and "Leaflet is not installed" in html
    assert "METERLINK_LEAFLET_DIR" in html
    assert get(opener, f"{base}/dash/leaflet/leaflet.js")[0] == 404
    # a folder named by METERLINK_LEAFLET_DIR is used as it is found
    folder = tmp_path / "leaflet"
    (folder / "images").mkdir(parents=True)
    (folder / "leaflet.js").write_text("var L;")
    (folder / "leaflet.css").write_text(".leaflet-container{}")
    (folder / "images" / "marker-icon.png").write_bytes(b"\x89PNG")
    monkeypatch.setenv("METERLINK_LEAFLET_DIR", str(folder))
    assert '<script src="/dash/leaflet/leaflet.js"' in get(opener, f"{base}/")[2]
    code, headers, body = get(opener, f"{base}/dash/leaflet/leaflet.js")
    assert (code, body) == (200, "var L;")
    with opener.open(f"{base}/dash/leaflet/images/marker-icon.png", timeout=10) as reply:
        assert reply.headers["Content-Type"] == "image/png" and reply.read() == b"\x89PNG"
    for bad in ("leaflet-src.js", "images/x.png", "..%2Fleaflet.js", "images/..%2F..%2Fx"):
        assert get(opener, f"{base}/dash/leaflet/{bad}")[0] == 404, bad
    gw.box.close()

    # no tiles (a gateway without Internet): the fleet page's policy is everyone's
    (tmp_path / "offline").mkdir()
    gw = make_gateway(tmp_path / "offline", dashboard={"map_tiles": ""})
    base = api(gw)
    opener = logged_in(base, TOKEN)
    code, headers, html = get(opener, f"{base}/")
    assert headers["Content-Security-Policy"] == HEADERS["Content-Security-Policy"]
    assert 'data-tiles=""' in html
    gw.box.close()


@pytest.mark.parametrize("section, message", [
    ({"map_tiles": "tile.openstreetmap.org/{z}/{x}/{y}.png"}, "dashboard.map_tiles must be"),
    ({"map_tiles": "https://t.example/{z}/{x}/{y}.png; img-src *"}, "dashboard.map_tiles"),
    ({"map_tiles": "https://t.example/{z}/{x}/{y}.png?key={apikey}"}, "dashboard.map_tiles"),
    ({"map_tiles": 1}, "dashboard.map_tiles must be an http:// or https:// URL"),
    ({"map_attribution": 5}, "dashboard.map_attribution must be a string: got 5"),
    ({"tiles": ""}, "dashboard.tiles is not a known key of [dashboard] (known: map_tiles, "
                    "map_attribution)"),
])
def test_the_dashboard_section_names_the_key_in_its_errors(tmp_path, section, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        parse_config({"sinks": {"file": {}}, "dashboard": section}, base_dir=tmp_path)


def test_a_tile_server_with_subdomains_is_one_wildcard_source(tmp_path):
    config = parse_config({"sinks": {"file": {}}, "dashboard": {
        "map_tiles": "https://{s}.tiles.city.example:8443/osm/{z}/{x}/{y}{r}.png"}},
        base_dir=tmp_path)
    assert config.dashboard.tile_origin == "https://*.tiles.city.example:8443"
    assert parse_config({"sinks": {"file": {}}, "dashboard": {"map_tiles": ""}},
                        base_dir=tmp_path).dashboard.tile_origin is None


# ---- in the browser ----------------------------------------------------------------------------

USE_L = [310, 280, 455, 390, 0, 520, 330, 295, 610, 350, 305, 270, 480, 400]  # litres a day


@pytest.mark.slow
def test_node_page_consumption_gaps_history_and_the_fleet_map_in_chromium(tmp_path, broker,
                                                                            browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    extra = (f'[sinks.history]\npath = "{tmp_path / "gw" / "history.db"}"\n'
             'batch_max_age_s = 0.05\nraw_days = 30\n[dashboard]\nmap_tiles = ""\n')
    with GatewayProcess(tmp_path / "gw", broker, extra=extra) as gw:
        gw.wait_subscribed()
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        for node, where in (("w1", {"lat": 50.8466, "lon": 4.3601}),
                            ("w2", {"lat": 50.8531, "lon": 4.3390}), ("w3", None)):
            body = {"board": "esp32-devkitc", "sensors": [], "interval_s": 3600,
                    "district": "centre"}
            if where:
                body["location"] = where
            assert gw.api(f"/api/nodes/{node}", "PUT", body)[0] == 201

        # w1: two totals a day over the last 15 days; seq 9-11 and 20 lost (two gaps)
        today = int(time.time()) // DAY * DAY
        first = today - (len(USE_L) + 1) * DAY
        total, seq, messages, ends = 25000, 1, [], []
        for day in range(len(USE_L) + 1):
            used = USE_L[day - 1] if day else 0
            for hour, part in ((7, used // 2), (22, used - used // 2)):
                total += part
                seq += 3 if seq == 9 else (1 if seq == 20 else 0)
                messages.append(meter("w1", seq, first + day * DAY + hour * 3600, total))
                seq += 1
            ends.append(total)
        messages += [status("w1", on=True, fw="1.3.2", boot=4, q=0, qd=0),
                     status("w1", on=False),
                     status("w1", on=True, fw="1.3.2", boot=4, q=0, qd=0),
                     status("w1", on=False, bye="update"),
                     status("w1", on=True, fw="1.4.0", boot=5, rst="hard", q=0, qd=0),
                     meter("w2", 1, today - DAY, 1000), status("w2", on=True, fw="1.4.0"),
                     meter("w3", 1, today - DAY, 500), status("w3", on=False, sleep=600)]
        publish(broker, messages)
        used = [[first + day * DAY, (ends[day] - ends[day - 1]) / 1000]
                for day in range(1, len(ends)) if first + day * DAY >= today - 29 * DAY]
        assert len(used) == len(USE_L)
        path = f"/api/nodes/w1/consumption?channel=water_volume&from={today - 29 * DAY}"
        wait_for(lambda: len(gw.api(path)[1].get("days", [])) == len(used), 30,
                 "w1's consumption", lambda: gw.log()[-2000:])
        wait_for(lambda: len(gw.api("/api/nodes/w1/events")[1]) == 8, 30, "w1's history")

        url = gw.url
        wait = WebDriverWait(browser, WAIT_S)
        browser.get(f"{url}/login")
        browser.find_element(By.ID, "token").send_keys(gw.token)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: d.current_url == f"{url}/")

        # the map: a marker per node with a location, on a blank background (no tiles)
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('map').dataset.markers") == "2")
        titles = browser.execute_script(
            "return Array.from(document.querySelectorAll('#map .leaflet-marker-icon'), "
            "m => m.title).sort()")
        assert titles == ["w1", "w2"]
        assert not browser.find_elements(By.CSS_SELECTOR, "#map .leaflet-tile")
        browser.find_element(By.CSS_SELECTOR, '#map .leaflet-marker-icon[title="w1"]').click()
        # (the popup fades in, and each poll refreshes it: read it in the page, at one instant)
        popup = "const p = document.querySelector('.map-popup');"
        shown = wait.until(lambda d: d.execute_script(
            popup + "return p && [p.querySelector('a').textContent, p.querySelector('a').href,"
                    " p.querySelector('.state').textContent, p.lastChild.textContent]"))
        assert shown[:3] == ["w1", f"{url}/nodes/w1", "online"], shown
        assert shown[3].startswith("last seen "), shown
        images = IMAGES if os.environ.get("METERLINK_DOC_IMAGES") == "1" else tmp_path
        images.mkdir(parents=True, exist_ok=True)
        wait.until(lambda d: d.execute_script(  # faded in
            "return getComputedStyle(document.querySelector('.leaflet-popup')).opacity") == "1")
        browser.save_screenshot(str(images / "dashboard-map.png"))

        # the node page: consumption per day as bars and a table, gaps, status history
        browser.execute_script(popup + "p.querySelector('a').click()")
        wait.until(lambda d: d.current_url == f"{url}/nodes/w1")
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('consumption').dataset.loads") == "1")
        bars = browser.execute_script(
            "const c = window.meterlinkConsumption.water_volume;"
            "return [c.data[0], c.data[1]];")
        assert bars[0] == [d + DAY / 2 for d, _ in used]
        assert [round(v, 6) for v in bars[1]] == [round(v, 6) for _, v in used]
        days = table(browser, "#consumption .meter-days tbody tr", "day")
        assert len(days) == len(used)
        assert days[str(used[-1][0])] == [time.strftime("%Y-%m-%d", time.gmtime(used[-1][0])),
                                          f"{used[-1][1]:g}"]
        assert browser.find_element(By.CSS_SELECTOR, "#consumption .meter-days tfoot td").text == \
            f"{sum(u for _, u in used):g}"
        assert browser.find_element(By.ID, "gaps-total").text == \
            "4 sequence numbers missing, in 2 ranges"
        assert table(browser, "#gaps tbody tr", "first") == {"9": ["9", "11", "3"],
                                                             "20": ["20", "20", "1"]}
        history = table(browser, "#events tbody tr", "i")
        assert [history[str(i)][1:] for i in range(len(history))] == [
            ["online", "was restarting"], ["firmware", "1.3.2 -> 1.4.0"],
            ["reboot", "boot 4 -> 5, reset cause hard"], ["restarting", "announced: update"],
            ["online", "was offline"], ["offline", "Last Will: the connection dropped"],
            ["online", ""], ["first_seen", "registered before"]]
        assert all(row[0].endswith("ago") for row in history.values())
        assert browser.find_element(By.CSS_SELECTOR, "#events tbody tr td").get_attribute(
            "title").endswith("Z")
        browser.set_window_size(1280, 1900)
        browser.execute_script("document.getElementById('consumption-part').scrollIntoView()")
        browser.save_screenshot(str(images / "dashboard-node-meter.png"))
        assert not math.isnan(sum(bars[1]))
