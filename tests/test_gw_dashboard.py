"""The operator dashboard (gateway/dashboard/) in a real headless Chromium: a real gateway
process with the reading history on a real Mosquitto, driven through Selenium.

The browser is Debian's `chromium` with its `chromium-driver` (`setup.sh browser`, run by
`make test`); the test fails, naming the setup step, when they are missing, and never
downloads a browser.
It takes the screenshots docs/operations.md shows, into the test's folder; with
METERLINK_DOC_IMAGES=1 into docs/images/ (dashboard-*.png), so that an ordinary run leaves the
work tree as it was:

    METERLINK_DOC_IMAGES=1 .venv/bin/python -m pytest -q tests/test_gw_dashboard.py

Also, in-process and without a browser: the session cookie's rules, and the node page
without uPlot installed.
"""

from __future__ import annotations

import math
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from dashboard_support import IMAGES, WAIT_S, logged_in, post_form, reading, status, table
from gateway_support import GatewayProcess, publish, wait_for

HISTORY_POINTS = 25  # n1's readings over the last hour, one per 2 minutes


@pytest.mark.slow
def test_login_fleet_live_update_and_node_charts_in_chromium(tmp_path, broker, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    extra = (f'[sinks.history]\npath = "{tmp_path / "gw" / "history.db"}"\n'
             'batch_max_age_s = 0.05\n')
    with GatewayProcess(tmp_path / "gw", broker, extra=extra) as gw:
        gw.wait_subscribed()
        now = int(time.time())
        first = now - 50 * 60
        history = [reading("n1", i + 1, first + i * 120,
                           2000 + int(300 * math.sin(i / 4)), 1000 + 7 * i, 3700 - i, -60)
                   for i in range(HISTORY_POINTS)]
        publish(broker, history + [
            status("n1", on=True, fw="1.4.0", q=0, qd=0),
            reading("n2", 1, now, 1875, 52000, 3550, -71),
            status("n2", on=True, fw="1.4.0", q=3, qd=1),
            reading("n3", 1, now - 30, 2210, 0, 3020, -83),
            status("n3", on=False, sleep=300, fw="1.3.2", q=0, qd=0)])
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        window = f"&from={now - 3600}&to={now + 60}&step=60"
        wait_for(lambda: len((gw.api(f"/api/nodes/n1/series?channels=temperature{window}")[1]
                              .get("series") or {}).get("temperature", [])) == HISTORY_POINTS,
                 30, "n1's history", lambda: gw.log()[-2000:])
        wait_for(lambda: {n["node"]: n["state"] for n in gw.api("/api/nodes")[1]} ==
                 {"n1": "online", "n2": "online", "n3": "asleep"}, 30, "the nodes' states")
        url = gw.url
        wait = WebDriverWait(browser, WAIT_S)

        # anonymous: to the login page; the page data is refused too
        browser.get(f"{url}/")
        assert browser.current_url == f"{url}/login?next=/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/dash/nodes.json", timeout=10)
        assert refused.value.code == 401
        # a login POST without the form's CSRF token is refused, even with the right token
        assert post_form(f"{url}/login", f"token={gw.token}") == 403

        # a wrong token is refused and gives no session
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: d.find_elements(By.ID, "login-error"))
        assert "not the gateway's API token" in browser.find_element(By.ID, "login-error").text
        browser.get(f"{url}/nodes/n1")
        assert browser.current_url == f"{url}/login?next=/nodes/n1"
        browser.get(f"{url}/")

        # the right token: the fleet
        browser.find_element(By.ID, "token").send_keys(gw.token)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: d.current_url == f"{url}/")
        cookie = browser.get_cookie("meterlink_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert gw.token not in cookie["value"] and gw.token not in gw.log()

        def rows() -> dict[str, list[str]]:
            # one snapshot in the page: the table is rebuilt by every poll, so reading it cell
            # by cell from here can meet rows that are gone (stale elements)
            return table(browser, "#fleet tbody tr", "node")

        wait.until(lambda d: set(rows()) == {"n1", "n2", "n3"})
        got = rows()
        assert got["n2"][1:2] == ["online"] and got["n3"][1] == "asleep"
        assert got["n2"][3:7] == ["3.55 V", "-71 dBm", "3 / 1", "1.4.0"]
        assert got["n2"][2].endswith("s ago")
        assert "temperature 18.75 °C" in got["n2"][8]

        # a reading and a new node arrive while the page is open: shown without a reload
        browser.execute_script("window.notReloaded = true")
        publish(broker, [reading("n2", 2, int(time.time()), 1932, 52010, 3548, -70),
                         reading("n4", 1, int(time.time()), 2105, 10, 3600, -65),
                         status("n4", on=True, fw="1.4.1", q=0, qd=0)])
        wait.until(lambda d: "n4" in rows() and "19.32 °C" in rows()["n2"][8])
        assert browser.execute_script("return window.notReloaded") is True
        images = IMAGES if os.environ.get("METERLINK_DOC_IMAGES") == "1" else tmp_path
        images.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(images / "dashboard-fleet.png"))

        # the filter box
        box = browser.find_element(By.ID, "filter")
        box.send_keys("1.4.1")
        wait.until(lambda d: list(rows()) == ["n4"])
        box.clear()
        box.send_keys(" ")  # clear() sends no input event
        wait.until(lambda d: len(rows()) == 4)

        # the node page: latest values, and a chart per channel with every point of the hour
        browser.find_element(By.LINK_TEXT, "n1").click()
        wait.until(lambda d: d.current_url == f"{url}/nodes/n1")
        browser.find_element(By.CSS_SELECTOR, '.ranges button[data-range="1h"]').click()
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('charts').dataset.ready") == "1h")
        points = browser.execute_script(
            "return Object.fromEntries(Object.entries(window.meterlinkCharts)"
            ".map(([k, c]) => [k, c.data[0].length]))")
        assert points == {"temperature": HISTORY_POINTS, "water_volume": HISTORY_POINTS,
                          "battery_voltage": HISTORY_POINTS, "rssi": HISTORY_POINTS}
        assert browser.find_elements(By.CSS_SELECTOR, ".chart canvas")
        latest = {ch: cells[1] for ch, cells in
                  table(browser, "#latest tbody tr", "channel").items()}
        last = HISTORY_POINTS - 1
        assert latest["temperature"] == f"{(2000 + int(300 * math.sin(last / 4))) / 100:g}"
        assert latest["water_volume"] == f"{(1000 + 7 * last) / 1000:g}"
        assert browser.current_url == f"{url}/nodes/n1?range=1h"
        browser.set_window_size(1280, 1250)  # the facts, the values and four charts
        browser.save_screenshot(str(images / "dashboard-node.png"))

        # the bearer-token API is as it was; logging out ends the session
        assert gw.api("/api/nodes")[0] == 200
        browser.find_element(By.CSS_SELECTOR, ".logout button").click()
        wait.until(lambda d: d.current_url.startswith(f"{url}/login"))
        browser.get(f"{url}/nodes/n1")
        assert browser.current_url == f"{url}/login?next=/nodes/n1"


# ---- without a browser ---------------------------------------------------------------------

def test_a_session_cookie_is_refused_when_tampered_with_expired_or_from_another_token():
    from gateway.dashboard import SESSION_S, Sessions, _safe_next

    sessions = Sessions(b"s" * 64, b"token-a")
    cookie, data = sessions.make(user="ana", now=1000)
    assert sessions.read(cookie, 1001) == data and data["user"] == "ana"
    assert sessions.read(cookie, 1000 + SESSION_S + 1) is None
    payload, mac = cookie.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    assert sessions.read(f"{forged}.{mac}", 1001) is None
    assert Sessions(b"s" * 64, b"token-b").read(cookie, 1001) is None  # a new token
    assert sessions.read("", 1001) is None and sessions.read("a.b.c", 1001) is None
    assert [_safe_next(t) for t in ("/nodes/n1?range=1h", "//evil.example/", "https://x/",
                                    "/\\evil", None)] == ["/nodes/n1?range=1h", "/", "/", "/", "/"]


def test_the_node_page_without_uplot_says_how_to_install_it(gateway_api, monkeypatch):
    base, folder = gateway_api
    secret = folder / "dashboard-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    opener = logged_in(base, "t0ken")
    with opener.open(f"{base}/nodes/n1", timeout=10) as reply:
        html = reply.read().decode()
    assert "Charts are unavailable" in html and "METERLINK_UPLOT_DIR" in html
    assert "uPlot.iife.min.js\"" not in html  # not linked
    with pytest.raises(urllib.error.HTTPError) as missing:
        opener.open(f"{base}/dash/uplot/uPlot.iife.min.js", timeout=10)
    assert missing.value.code == 404
    # a folder named by METERLINK_UPLOT_DIR is used as it is found, no restart needed
    (folder / "uplot").mkdir()
    (folder / "uplot" / "uPlot.iife.min.js").write_text("var uPlot;")
    (folder / "uplot" / "uPlot.min.css").write_text(".uplot{}")
    monkeypatch.setenv("METERLINK_UPLOT_DIR", str(folder / "uplot"))
    with opener.open(f"{base}/nodes/n1", timeout=10) as reply:
        assert "Charts are unavailable" not in reply.read().decode()
    with opener.open(f"{base}/dash/uplot/uPlot.iife.min.js", timeout=10) as reply:
        assert reply.read() == b"var uPlot;"
    # a POST form without the session's CSRF token is refused; with it, logout works
    assert post_form(f"{base}/logout", "csrf=wrong") == 403
    with opener.open(f"{base}/nodes/n1", timeout=10) as reply:
        csrf = re.search(r'name="csrf" value="([^"]+)"', reply.read().decode()).group(1)
    with opener.open(f"{base}/logout", data=f"csrf={csrf}".encode(), timeout=10) as reply:
        assert reply.url == f"{base}/login"
    with opener.open(f"{base}/", timeout=10) as reply:
        assert reply.url == f"{base}/login?next=/"
