"""Shared by the dashboard's browser tests (tests/test_gw_dash*.py).

    browser                       # fixture (conftest.py): Debian's headless chromium, Selenium
    table(browser, "#fleet tbody tr", "node")   # {row's data-node: [cell texts]}, one instant
    reading(node, seq, t, temp_cc, litres, mv, rssi), status(node, **fields)  # (topic, payload)
    post_form(url, body, cookie) -> HTTP status;  logged_in(base, token) -> urllib opener
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cbor2

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
WAIT_S = 20


def reading(node: str, seq: int, t: int, temp_cc: int, litres: int, mv: int,
            rssi: int) -> tuple[str, bytes]:
    return f"m/{node}/r", cbor2.dumps([1, seq, t, {1: temp_cc, 4: litres, 7: mv, 8: rssi}])


def status(node: str, **fields) -> tuple[str, bytes]:
    return f"m/{node}/s", cbor2.dumps(fields)


def table(browser, rows: str, key: str) -> dict[str, list[str]]:
    """{row's data-KEY: [each cell's text]} of the rows matching `rows`, read at one instant."""
    return browser.execute_script(
        "const out = {};"
        "for (const r of document.querySelectorAll(arguments[0]))"
        "  out[r.dataset[arguments[1]]] = Array.from(r.cells, c => c.innerText.trim());"
        "return out;", rows, key)


def post_form(url: str, body: str, cookie: str = "") -> int:
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def logged_in(base: str, token: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
        http.cookiejar.CookieJar()))
    with opener.open(f"{base}/login", timeout=10) as reply:
        csrf = re.search(r'name="csrf" value="([^"]+)"', reply.read().decode()).group(1)
    body = urllib.parse.urlencode({"csrf": csrf, "token": token, "next": "/"}).encode()
    with opener.open(f"{base}/login", data=body, timeout=10) as reply:
        assert reply.url == f"{base}/"
    return opener
