"""The public environment page (gateway/dashboard/public.py): per district, the current air
quality, weather and water quality of the nodes registered public, with charts over 24 h and
30 days, for anyone, and nothing else.

In-process, without a browser: a real Gateway's ingest (`handle_message`) and history sink
behind the real API and dashboard on a loopback port, asked as an anonymous visitor (no
cookie). In a real headless Chromium (slow): a real gateway process on a real Mosquitto, the
nodes registered through the API; it takes docs/images/dashboard-public.png with
METERLINK_DOC_IMAGES=1 (tests/test_gw_dashboard.py says how).

The expected numbers are worked out by hand from the readings each test sends.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request

import cbor2
import pytest

from dashboard_support import IMAGES, WAIT_S, table
from gateway_support import GatewayProcess, publish, wait_for

HOUR, DAY = 3600, 86400
# wire keys of the channel table (gateway/channels.json); instance 1 is key + 64
TEMP, HUM, PRES, WATER, FLOW, BATT, RSSI, PM1, PM25, PM10 = 1, 2, 3, 4, 5, 7, 8, 9, 10, 11
PH, COND, CHLORINE, TURB, TEMP_1 = 12, 13, 14, 18, 65

# what the nodes have (registered `sensors`): a weather and air station; a weather station
# beside a water meter and an M-Bus meter whose flow temperature is temperature:1; a meter with
# a BME280 that is not public; a water-quality probe (its temperature is the water's)
AIR_STATION = [{"driver": "bme280", "bus": "i2c0", "address": 118},
               {"driver": "pms5003", "uart": "uart2"}, {"driver": "battery", "pin": 35},
               {"driver": "rssi"}]
STATION_AND_METER = [{"driver": "sht4x", "bus": "i2c0"},
                     {"driver": "pulse", "kind": "water", "pin": 4},
                     {"driver": "mbus", "uart": "uart2", "secondary": "55550002", "instance": 1},
                     {"driver": "battery", "pin": 35}]
PRIVATE_METER = [{"driver": "bme280", "bus": "i2c0", "address": 118},
                 {"driver": "pulse", "kind": "water", "pin": 4}]
WATER_PROBE = [{"driver": "modbus", "uart": "uart2", "address": 1, "registers": [
    {"reg": 0, "fn": 4, "channel": "ph"}, {"reg": 1, "fn": 4, "channel": "turbidity"},
    {"reg": 2, "fn": 4, "channel": "conductivity"}, {"reg": 3, "fn": 4, "channel": "free_chlorine"},
    {"reg": 4, "fn": 4, "type": "s16", "channel": "temperature", "instance": 1}]}]

# nothing of these may reach a visitor: ids, meter values (98765.432 and 4321 m³, 4.321 L/s),
# the meter's flow temperature, battery, RSSI, firmware, the coordinates; each has a "." or a
# "-", so that no timestamp (whole seconds in the page) can hold one by chance
NODE_IDS = ("pub-alpha", "pub-beta", "meter-gamma", "probe-delta", "old-epsilon")
PRIVATE = ("98765.", "4321.", "4.321", "0.004321", "55.55", "3.456", "-67", "9.8.7",
           "battery", "rssi", "water_volume", "water_flow", "firmware", "12.3456", "45.6789",
           "alarm")


def msg(node: str, seq: int, t: int, values: dict[int, int]) -> tuple[str, bytes]:
    return f"m/{node}/r", cbor2.dumps([1, seq, t, values])


def registration(sensors: list, *, public: bool, district: str | None) -> dict:
    body = {"board": "esp32-devkitc", "sensors": sensors, "interval_s": 900, "public": public,
            "location": {"lat": 12.3456, "lon": 45.6789}}
    if district:
        body["district"] = district
    return body


def anonymous(url: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers (lower-case names), body) of a GET without any cookie or token."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            status, headers, body = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in headers.items()}, body


class Site:
    """A Gateway (ingest and history sink run here, on the test's thread) and its API with
    the dashboard on a loopback port."""

    def __init__(self, tmp_path) -> None:
        from gateway.webapp import ApiServer
        from gateway.config import parse_config
        from gateway.daemon import Gateway
        from gateway.sinks import make_sink

        # raw_days past 30: the test's 30 days of history are accepted by the sink
        config = parse_config({"sinks": {"history": {"raw_days": 31}},
                               "api": {"port": 0, "token": "t0ken"}}, base_dir=tmp_path)
        self.gw = Gateway(config)
        self.gw.open_storage()
        self.sink = make_sink(config.sinks[0])
        self.sink.open()
        self.server = ApiServer(self.gw)
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.seq: dict[str, int] = {}

    def close(self) -> None:
        self.server.stop()
        self.sink.close()
        self.gw.box.close()

    def api(self, path: str, method: str = "GET", body=None) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{self.base}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def reading(self, node: str, t: int, values: dict[int, int]) -> None:
        self.seq[node] = self.seq.get(node, 0) + 1
        assert self.gw.handle_message(*msg(node, self.seq[node], t, values),
                                      received_at=t) == "accepted"

    def history_only(self, node: str, records: list[tuple[str, str, float, int]]) -> None:
        """SenML records (channel, unit, value, t) queued for the history sink alone, as
        the ingest queues a reading's (no registry update: an old past)."""
        with self.gw.box.transaction():
            for ch, unit, v, t in records:
                self.seq[node] = self.seq.get(node, 0) + 1
                self.gw.box.add_item("reading", node, self.seq[node],
                                     [{"n": f"{node}:{ch}", "u": unit, "v": v, "t": t}], t)

    def deliver(self) -> None:
        """What the gateway's history worker does: every pending batch into the history."""
        while (batch := self.gw.box.claim_batch("history", max_records=100000,
                                                max_bytes=1 << 30)) is not None:
            self.sink.deliver(batch)
            self.gw.box.confirm(batch)


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def quarter_hours(now: int, n: int) -> list[int]:
    """The last `n` quarter-hour starts up to now, oldest first (one per 24 h chart point)."""
    q = now // 900 * 900
    return [q - k * 900 for k in range(n - 1, -1, -1)]


def fill(site: Site, now: int) -> None:
    """Harbour: pub-alpha (air and weather), pub-beta (weather and a water meter), the
    private meter-gamma; Old Town: probe-delta (water quality, last heard 3 h ago); and
    old-epsilon, public in Harbour but retired."""
    for node, sensors, public, district in [
            ("pub-alpha", AIR_STATION, True, "Harbour"),
            ("pub-beta", STATION_AND_METER, True, "Harbour"),
            ("meter-gamma", PRIVATE_METER, False, "Harbour"),
            ("probe-delta", WATER_PROBE, True, "Old Town"),
            ("old-epsilon", AIR_STATION, True, "Harbour")]:
        status, reply = site.api(f"/api/nodes/{node}", "PUT",
                                 registration(sensors, public=public, district=district))
        assert status == 201, reply
    site.gw.handle_message("m/pub-beta/s", cbor2.dumps({"on": True, "fw": "9.8.7"}),
                           received_at=now)
    for i, t in enumerate(quarter_hours(now, 24)):  # every 15 min over the last 6 hours
        site.reading("pub-alpha", t, {TEMP: 2000 + 10 * i, HUM: 6000, PRES: 101300, PM25: 12,
                                      PM10: 20, PM1: 8, BATT: 3456, RSSI: -67})
        site.reading("pub-beta", t, {TEMP: 2200 + 10 * i, HUM: 5000, WATER: 98765432,
                                     FLOW: 4321, TEMP_1: 5555, BATT: 3456})
        site.reading("meter-gamma", t, {TEMP: 3000, HUM: 9000, WATER: 4321000, BATT: 3456})
        site.reading("old-epsilon", t, {TEMP: 9000, PM25: 900})
    site.reading("probe-delta", now - 3 * HOUR, {PH: 712, TURB: 35, COND: 5230, CHLORINE: 45,
                                                 TEMP_1: 1450})
    status, reply = site.api("/api/nodes/old-epsilon/retire", "POST", {"note": "replaced"})
    assert status == 200, reply
    site.deliver()


def values(data: dict) -> dict[str, dict[str, dict]]:
    """{district: {measure: its entry}} of the JSON."""
    return {d["name"]: {q["key"]: q for th in d["themes"] for q in th["quantities"]}
            for d in data["districts"]}


def test_district_means_of_the_public_stations_for_anyone_and_nothing_private(site):
    now = int(time.time())
    fill(site, now)
    status, headers, body = anonymous(f"{site.base}/public/data.json?range=24h")
    assert status == 200 and "set-cookie" not in headers
    assert headers["cache-control"].startswith("public, max-age=")
    assert "default-src 'self'" in headers["content-security-policy"]
    data = json.loads(body)
    got = values(data)
    assert list(got) == ["Harbour", "Old Town"]
    harbour = got["Harbour"]
    # air and weather of the two public stations of Harbour: their means; the private meter's
    # BME280 (30 °C, 90 %RH) and the retired station (90 °C, 900 µg/m³) count for nothing
    assert list(harbour) == ["pm2_5", "pm10", "pm1", "temperature", "humidity", "pressure"]
    assert harbour["temperature"]["value"] == pytest.approx(23.3)  # (22.30 + 24.30) / 2
    assert harbour["temperature"]["unit"] == "°C" and harbour["temperature"]["stations"] == 2
    assert harbour["humidity"]["value"] == pytest.approx(55.0)
    assert harbour["pressure"]["value"] == pytest.approx(1013.0)  # hPa, pub-alpha's alone
    assert harbour["pm2_5"]["value"] == pytest.approx(12.0) and \
        harbour["pm2_5"]["unit"] == "µg/m³"
    assert not any(q["stale"] for q in harbour.values())
    assert now - harbour["temperature"]["t"] < 900
    # 24 h: one point per quarter hour with data, the two stations' mean
    series = harbour["temperature"]["series"]
    assert [p[0] for p in series] == quarter_hours(now, 24)
    assert [p[1] for p in series] == pytest.approx([21.0 + 0.1 * i for i in range(24)])
    assert data["step"] == 900 and data["to"] - data["from"] < DAY
    # the water-quality probe: its temperature:1 is the water's; heard 3 h ago, so stale
    town = got["Old Town"]
    assert {k: (q["value"], q["unit"]) for k, q in town.items()} == {
        "free_chlorine": (0.45, "mg/L"), "ph": (7.12, "pH"), "turbidity": (0.35, "NTU"),
        "conductivity": (5230.0, "µS/cm"), "water_temperature": (14.5, "°C")}
    assert all(q["stale"] for q in town.values())
    assert [d["stations"] for d in data["districts"]] == [2, 1]

    status, headers, page = anonymous(f"{site.base}/public")
    html = page.decode()
    assert status == 200 and "set-cookie" not in headers
    assert headers["cache-control"].startswith("public, max-age=")
    assert 'action="/logout"' not in html and "<nav" not in html and 'name="csrf"' not in html
    assert "City environment" in html
    rows = dict(re.findall(r'<th scope="row">([^<]+)</th>\s*<td class="num">([^<]+)</td>', html))
    assert rows["Temperature"] == "23.3" and rows["Humidity"] == "55" and \
        rows["Air pressure"] == "1013" and rows["PM2.5"] == "12" and rows["pH"] == "7.12"
    assert "stale</span> updated 3 h ago" in html
    assert set(rows) == {"PM2.5", "PM10", "PM1", "Temperature", "Humidity", "Air pressure",
                         "Free chlorine", "pH", "Turbidity", "Conductivity",
                         "Water temperature"}
    for text in (body.decode(), html):
        for secret in NODE_IDS + PRIVATE:
            assert secret not in text, secret


def test_thirty_days_are_720_hourly_means_ending_with_the_hour_under_way(site):
    now = int(time.time())
    fill(site, now)
    top = now // HOUR * HOUR
    # pub-alpha's PM2.5 twice an hour for 30 days and one hour more before the range, then
    # the readings of `fill` (every 15 min) over the last 6 hours
    old = []
    for h in range(top - 30 * DAY, top - 5 * HOUR, HOUR):
        i = (h - top) // HOUR
        old += [("pm2_5", "kg/m3", (i % 24) * 1e-9, h + 600),
                ("pm2_5", "kg/m3", (i % 24 + 2) * 1e-9, h + 2400)]
    site.history_only("pub-alpha", old)
    site.deliver()
    status, _, body = anonymous(f"{site.base}/public/data.json?range=30d")
    assert status == 200
    data = json.loads(body)
    assert data["step"] == HOUR and data["from"] == top - 30 * DAY + HOUR
    series = values(data)["Harbour"]["pm2_5"]["series"]
    assert len(series) == 720
    assert [p[0] for p in series] == list(range(top - 30 * DAY + HOUR, top + 1, HOUR))
    first = (-30 * DAY + HOUR) // HOUR % 24
    # the mean of its two values (whole µg/m³: the history rounds values to 1e-9 of the
    # SenML unit, kg/m³ here)
    assert series[0][1] == pytest.approx(first + 1)
    assert values(data)["Harbour"]["pm2_5"]["series"][-1][1] == pytest.approx(12.0)
    assert len(values(data)["Harbour"]["temperature"]["series"]) in (6, 7)  # 6 h of readings


def test_anything_but_a_known_range_is_a_400_and_nothing_needs_a_login(site):
    for path in ("/public?range=7d", "/public/data.json?range=1h", "/public/data.json?x=1",
                 "/public?range=24h&range=30d", "/public/data.json?range=24h&node=pub-alpha",
                 "/public/data.json?range=%00", "/public?range=" + "9" * 5000):
        status, headers, body = anonymous(site.base + path)
        assert status == 400, path
        assert json.loads(body)["error"].startswith(("range:", "x:", "node:")), path
    for path in ("/public", "/public?range=30d", "/public/data.json"):
        assert anonymous(site.base + path)[0] == 200
    assert "No public station has reported yet" in anonymous(site.base + "/public")[2].decode()
    assert "/public" not in anonymous(site.base + "/openapi.json")[2].decode()
    # the operator pages still refuse an anonymous visitor
    status, _, _ = anonymous(site.base + "/dash/nodes.json")
    assert status == 401


def test_answers_are_built_once_per_cache_period_whatever_the_crowd(site):
    from gateway.dashboard.public import CACHE_S

    now = int(time.time())
    fill(site, now)
    kept = site.server.app.state.public_snapshots
    clock = [1000.0]
    kept.clock = lambda: clock[0]
    before = json.loads(anonymous(f"{site.base}/public/data.json")[2])
    builds = kept.builds
    for _ in range(20):
        anonymous(f"{site.base}/public/data.json")
        anonymous(f"{site.base}/public")
    assert kept.builds == builds + 1  # the page, from the same data
    # a new reading shows once the answer has expired, not before
    site.reading("pub-alpha", now + 1, {PM25: 30})
    assert json.loads(anonymous(f"{site.base}/public/data.json")[2]) == before
    clock[0] += CACHE_S
    after = values(json.loads(anonymous(f"{site.base}/public/data.json")[2]))
    assert after["Harbour"]["pm2_5"]["value"] == pytest.approx(30.0)


def test_a_temperature_is_public_only_from_a_weather_sensor_or_a_water_quality_probe():
    from gateway.dashboard.public import sources

    labels = ["temperature", "temperature:1", "temperature:2", "humidity", "pm2_5",
              "water_volume", "water_flow", "battery_voltage", "rssi", "alarms", "ph"]
    assert sources(AIR_STATION, labels) == {"temperature": "temperature",
                                            "humidity": "humidity", "pm2_5": "pm2_5",
                                            "ph": "ph"}
    assert sources(STATION_AND_METER, labels)["temperature"] == "temperature"
    assert "temperature:1" not in sources(STATION_AND_METER, labels)  # the M-Bus meter's
    assert sources(WATER_PROBE, labels)["temperature:1"] == "water_temperature"
    assert "temperature" not in sources(WATER_PROBE, labels)
    # a DS18B20, an ultrasonic flow meter's temperature, junk stored at registration: none
    flow_meter = [{"driver": "modbus", "registers": [{"reg": 0, "channel": "water_flow"},
                                                     {"reg": 2, "channel": "temperature"}]}]
    for sensors in ([{"driver": "ds18b20", "pin": 4}], flow_meter, "x", [1, None],
                    [{"driver": "bme280", "instance": "0"}], [{"driver": "modbus"}],
                    [{"driver": "modbus", "registers": [{"channel": ["ph"]}, "x"]}]):
        assert "temperature" not in sources(sensors, labels), sensors


def test_the_allow_list_holds_channels_of_the_table_and_no_meter_or_node_internals():
    from gateway.channels import default_table
    from gateway.dashboard.public import BY_NAME, THEMES

    names = {ch.name for ch in default_table()}
    listed = {q.channel for th in THEMES for q in th.quantities} | set(BY_NAME)
    assert listed <= names
    assert not listed & {"water_volume", "water_flow", "gas_volume", "heat_energy",
                         "night_flow", "water_pressure", "battery_voltage", "rssi", "alarms"}
    assert [th.key for th in THEMES] == ["air", "weather", "water"]  # noise: not an arithmetic mean


# ---- in a browser --------------------------------------------------------------------------

@pytest.mark.slow
def test_an_anonymous_visitor_sees_district_values_and_charts_and_no_operator_page(
        tmp_path, broker, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    extra = (f'[sinks.history]\npath = "{tmp_path / "gw" / "history.db"}"\n'
             'batch_max_age_s = 0.05\n')
    with GatewayProcess(tmp_path / "gw", broker, extra=extra) as gw:
        gw.wait_subscribed()
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        for node, sensors, public in [("pub-alpha", AIR_STATION, True),
                                      ("pub-beta", STATION_AND_METER, True),
                                      ("meter-gamma", PRIVATE_METER, False)]:
            status, reply = gw.api(f"/api/nodes/{node}", "PUT",
                                   registration(sensors, public=public, district="Harbour"))
            assert status == 201, reply
        now = int(time.time())
        messages = [("m/pub-beta/s", cbor2.dumps({"on": True, "fw": "9.8.7", "q": 0}))]
        for i, t in enumerate(quarter_hours(now, 24)):
            messages += [
                msg("pub-alpha", i + 1, t, {TEMP: 2000 + 10 * i, HUM: 6000, PRES: 101300,
                                            PM25: 12, PM10: 20, PM1: 8, BATT: 3456, RSSI: -67}),
                msg("pub-beta", i + 1, t, {TEMP: 2200 + 10 * i, HUM: 5000, WATER: 98765432,
                                           FLOW: 4321, TEMP_1: 5555, BATT: 3456}),
                msg("meter-gamma", i + 1, t, {TEMP: 3000, WATER: 4321000, BATT: 3456})]
        publish(broker, messages)
        window = f"&from={now - DAY}&to={now + 60}&step=900"
        wait_for(lambda: all(
            len((gw.api(f"/api/nodes/{n}/series?channels=temperature{window}")[1]
                 .get("series") or {}).get("temperature", [])) == 24
            for n in ("pub-alpha", "pub-beta")), 30, "the history", lambda: gw.log()[-2000:])
        url = gw.url
        wait = WebDriverWait(browser, WAIT_S)

        browser.get(f"{url}/public")
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('public').dataset.ready") == "24h")
        assert browser.get_cookies() == []
        assert browser.find_element(By.CSS_SELECTOR, "header .brand").text == "City environment"
        assert not browser.find_elements(By.CSS_SELECTOR, "header nav, .logout")
        rows = table(browser, 'section[data-district="Harbour"] tbody tr', "key")
        assert rows["temperature"][2:4] == ["23.3", "°C"]
        assert rows["pm2_5"][:4] == ["Air quality", "PM2.5", "12", "µg/m³"]
        assert rows["pressure"][2:4] == ["1013", "hPa"]
        assert rows["humidity"][4].startswith("updated ") and "stale" not in rows["humidity"][4]
        points = browser.execute_script(
            "return Object.fromEntries(Object.entries(window.meterlinkCharts)"
            ".map(([k, c]) => [k, c.data[0].length]))")
        assert points == {f"Harbour/{k}": 24 for k in
                          ("pm2_5", "pm10", "pm1", "temperature", "humidity", "pressure")}
        assert browser.find_elements(By.CSS_SELECTOR, ".chart canvas")
        # the text of the page and the JSON it fetches: no meter, no node, nothing internal
        fetched = browser.execute_script(
            "return fetch('/public/data.json?range=24h', {credentials: 'omit'})"
            ".then(r => r.text());")
        text = browser.find_element(By.TAG_NAME, "body").text
        for where in (text, browser.page_source, fetched):
            for secret in NODE_IDS + PRIVATE:
                assert secret not in where, secret
        browser.set_window_size(1280, 1100)
        images = IMAGES if os.environ.get("METERLINK_DOC_IMAGES") == "1" else tmp_path
        images.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(images / "dashboard-public.png"))

        # 30 days: hourly means; the hours of the last 6 h that have readings
        browser.find_element(By.CSS_SELECTOR, '.ranges button[data-range="30d"]').click()
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('public').dataset.ready") == "30d")
        hours = len({t // HOUR for t in quarter_hours(now, 24)})
        assert browser.execute_script(
            "return window.meterlinkCharts['Harbour/temperature'].data[0].length") == hours
        assert browser.current_url == f"{url}/public?range=30d"

        # the operator pages send the same anonymous visitor to the login
        for path in ("/", "/alarms"):
            browser.get(f"{url}{path}")
            assert browser.current_url == f"{url}/login?next={path}", path
