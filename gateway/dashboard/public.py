"""The public environment page: air quality, weather and water quality per district, for
anyone, read-only, without a login.

    GET /public?range=24h|30d              the page: current values, charts (uPlot)
    GET /public/data.json?range=24h|30d    the same data as JSON (the page polls it every 60 s)

**What is shown.** Only nodes registered with `public: true` and a `district`, not retired
(`Api.public_nodes`), and of those only the channels of the allow-list `THEMES`:

    air            pm2_5, pm10, pm1
    weather        temperature, humidity, pressure
    water quality  free_chlorine, ph, turbidity, conductivity, water temperature

Noise (`noise_laeq`, `noise_lamax`) and rain are not shown yet: a district's noise level is
an energy mean (10 lg of the mean of 10^(L/10)), not the arithmetic mean the page takes, and
a rain figure is a sum over time, not a latest value. A new channel becomes public by a row
here, never by itself.
Every channel of the allow-list but `temperature` names one quantity wherever it comes from.
`temperature` does not: it is the weather, a water-quality probe's water, or an M-Bus heat or
water meter's flow (docs/drivers.md), and the history keeps no record of which channels
arrived together (the ngsi-ld sink's `station()` decides from the record). So a node's
temperature instance is public only when its registered `sensors` say what gives it: a
`bme280` or `sht4x` at that instance is weather, a `modbus` entry that maps a water-quality
channel and `temperature` at that instance is the water's; any other (ds18b20, mbus, an
unregistered sensor) is never shown. Meter totals and flows, battery, RSSI, alarms, firmware,
sequence numbers, node ids, states and coordinates are never read into what this module
returns: the data is built from scratch, name by name, never filtered out of a node row.

**Per district, not per station.** Each value is the mean over the district's stations of
their latest value (only the values not older than `STALE_S`; when none is that fresh, the
newest one, shown as stale), and each chart point the mean of the stations' means of that
step. Why not one row per station: a station is then a thing the public can single out, and
its label needs an order that is stable yet tells nothing (not its id, not when it was
registered); a district figure is what the public asks about, and it stays the same when a
station is added, replaced or retired. The page says how many stations a district has (one:
its values are that station's, and still nothing finer than the district says where it is).
"Updated" is the age of the oldest value in the mean (every value used is at least that
fresh).

**Charts** come from the reading history (`[sinks.history]`): 24 h as 15-minute means of the
raw values (96 points), 30 days as hourly means (720 points); each range ends with the step
under way. Without the history there are values and no charts.

**Caching.** Each answer (page or JSON, per range: four in all, since every other query is a
400) is built once and kept `CACHE_S` seconds in this process (`Snapshots`): a crowd of
visitors costs the database one query set per range every `CACHE_S` seconds, whatever its
size; one lock makes concurrent misses wait for the one build instead of each querying.
Browsers and proxies may keep an answer `MAX_AGE_S` (`Cache-Control: public`). That is safe
because the answer never depends on the visitor: these routes never read the session cookie
(an operator who is logged in sees the public header too), set no cookie, have no form.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gateway.dashboard import HEADERS, ago, uplot_dir

if TYPE_CHECKING:
    from gateway.dashboard import Dash

STALE_S = 2 * 3600  # a value older than this is shown as stale
CACHE_S = 10.0  # an answer is built at most once per this many seconds (per range)
MAX_AGE_S = 30  # what browsers and proxies may keep it
POLL_S = 60  # the page's polling
# range -> (span, step), both seconds: the chart's points are step means
SPANS = {"24h": (86400, 900), "30d": (30 * 86400, 3600)}
DEFAULT_SPAN = "24h"


class Quantity(NamedTuple):
    key: str  # in the JSON, unique across themes
    channel: str  # in the channel table: its units
    title: str


class Theme(NamedTuple):
    key: str
    title: str
    quantities: tuple[Quantity, ...]


THEMES = (
    Theme("air", "Air quality", (Quantity("pm2_5", "pm2_5", "PM2.5"),
                                 Quantity("pm10", "pm10", "PM10"),
                                 Quantity("pm1", "pm1", "PM1"))),
    Theme("weather", "Weather", (Quantity("temperature", "temperature", "Temperature"),
                                 Quantity("humidity", "humidity", "Humidity"),
                                 Quantity("pressure", "pressure", "Air pressure"))),
    Theme("water", "Water quality", (Quantity("free_chlorine", "free_chlorine", "Free chlorine"),
                                     Quantity("ph", "ph", "pH"),
                                     Quantity("turbidity", "turbidity", "Turbidity"),
                                     Quantity("conductivity", "conductivity", "Conductivity"),
                                     Quantity("water_temperature", "temperature",
                                              "Water temperature"))),
)
# channel -> quantity key, for the channels that are one quantity whatever gives them: all
# but temperature (`temperatures` says whose it is)
BY_NAME = {q.channel: q.key for theme in THEMES for q in theme.quantities
           if q.channel != "temperature"}
WEATHER_DRIVERS = ("bme280", "sht4x")  # their temperature is the air's
WATER_QUALITY = frozenset({"ph", "conductivity", "free_chlorine", "turbidity"})
MAX_INSTANCE = 15


def _instance(value: Any, default: int) -> Optional[int]:
    if value is None:
        return default
    return value if type(value) is int and 0 <= value <= MAX_INSTANCE else None


def _label(channel: str, instance: int) -> str:
    return channel if instance == 0 else f"{channel}:{instance}"


def temperatures(sensors: Any) -> dict[str, str]:
    """{temperature label: "temperature" | "water_temperature"} from a node's registered
    `sensors` (stored as given at registration: anything may be in it)."""
    out: dict[str, str] = {}
    for s in sensors if isinstance(sensors, list) else ():
        if not isinstance(s, dict):
            continue
        inst = _instance(s.get("instance"), 0)
        if inst is None:
            continue
        if s.get("driver") in WEATHER_DRIVERS:
            out.setdefault(_label("temperature", inst), "temperature")
        elif s.get("driver") == "modbus" and isinstance(s.get("registers"), list):
            regs = [r for r in s["registers"] if isinstance(r, dict)]
            if not any(isinstance(r.get("channel"), str) and r["channel"] in WATER_QUALITY
                       for r in regs):
                continue  # a flow meter's temperature, not the water's quality
            for r in regs:
                at = _instance(r.get("instance"), inst)
                if r.get("channel") == "temperature" and at is not None:
                    out.setdefault(_label("temperature", at), "water_temperature")
    return out


def sources(sensors: Any, labels: Any) -> dict[str, str]:
    """{channel label: quantity key} of a node's channels (`labels`) that are public."""
    temps = temperatures(sensors)
    out = {}
    for label in labels:
        name = label.split(":")[0]
        if name in BY_NAME:
            out[label] = BY_NAME[name]
        elif label in temps:
            out[label] = temps[label]
    return out


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def current(values: list[tuple[float, float]], now: float) -> dict[str, Any]:
    """The district's value from its stations' latest (t, v): the mean of those not older
    than STALE_S, `t` the oldest of them; when none is, the newest alone, stale."""
    fresh = [x for x in values if now - x[0] <= STALE_S]
    used = fresh or [max(values)]
    return {"value": sum(v for _, v in used) / len(used), "t": min(t for t, _ in used),
            "stale": not fresh, "stations": len(used)}


def span_of(name: str, now: int) -> tuple[int, int, int]:
    """(from, to, step) of a range: whole steps, the last one the step under way."""
    span, step = SPANS[name]
    return now // step * step - span + step, now, step


def build(dash: "Dash", span: str, now: int) -> dict[str, Any]:
    """The public data of every district for range `span` at `now` (whole seconds: every time
    in the answer is), see the module docstring."""
    api = dash.api
    t0, t1, step = span_of(span, now)
    districts: dict[str, dict[str, Any]] = {}
    for node in api.public_nodes():
        district = node["district"]
        if not district:
            continue  # the page has no place for it
        latest = node["last_values"] if isinstance(node["last_values"], dict) else {}
        found = sources(node["sensors"], latest)
        if not found:
            continue
        d = districts.setdefault(district, {"stations": 0, "quantities": {}})
        d["stations"] += 1
        for label, key in found.items():
            d["quantities"].setdefault(key, []).append((node["node"], label, latest[label]))
    out = []
    for name in sorted(districts, key=lambda n: (n.casefold(), n)):
        d = districts[name]
        themes = []
        for theme in THEMES:
            shown = []
            for q in theme.quantities:
                found = d["quantities"].get(q.key, [])
                values = [(x["t"], x["v"]) for _, _, x in found if isinstance(x, dict)
                          and _number(x.get("v")) and _number(x.get("t"))]
                if not values:
                    continue
                unit, factor = dash.units.get(q.channel, ["", 1])
                now_value = current(values, now)
                now_value["value"] = _round(now_value["value"] * factor)
                series = _series(api.history, [(n, label) for n, label, _ in found],
                                 t0, t1, step, factor)
                shown.append({"key": q.key, "title": q.title, "unit": unit, **now_value,
                              "series": series})
            if shown:
                themes.append({"key": theme.key, "title": theme.title, "quantities": shown})
        out.append({"name": name, "stations": d["stations"], "themes": themes})
    return {"now": now, "range": span, "from": t0, "to": t1, "step": step,
            "stale_after_s": STALE_S, "charts": api.history is not None, "districts": out}


def _series(history: Any, found: list[tuple[str, str]], t0: float, t1: float, step: int,
            factor: float) -> list[list[float]]:
    """[[t, mean over the stations of their step means], ...] in the shown unit."""
    if history is None:
        return []
    sums: dict[float, list[float]] = {}
    for node, label in found:
        for b, v in history.series(node, [label], t0, t1, step)[label]:
            acc = sums.setdefault(b, [0.0, 0])
            acc[0] += v
            acc[1] += 1
    return [[b, _round(s / n * factor)] for b, (s, n) in sorted(sums.items())]


def number(x: float) -> str:
    """A value as static/common.js `number()` shows it: four significant digits."""
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return "0" if x == 0 else f"{float(f'{x:.4g}'):g}"


class Snapshots:
    """Answers by key, each built at most once per `ttl_s`; a request that finds its answer
    expired builds it under the one lock, so the requests arriving meanwhile wait and take
    that answer instead of building their own."""

    def __init__(self, *, ttl_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.builds = 0
        self._lock = threading.RLock()  # a page's build takes its data from here too
        self._kept: dict[str, tuple[float, Any]] = {}

    def __repr__(self) -> str:
        return f"Snapshots(ttl_s={self.ttl_s}, kept={sorted(self._kept)})"

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and self.clock() - hit[0] < self.ttl_s:
                return hit[1]
            value = make()
            self.builds += 1
            self._kept[key] = (self.clock(), value)
            return value


def _span(request: Request) -> tuple[Optional[str], str]:
    """(range, "") of the query, or (None, the problem): `range` is its only parameter."""
    params = request.query_params
    for name in params:
        if name != "range":
            return None, f"{name[:40]}: unknown query parameter (known: range)"
        if len(params.getlist(name)) > 1:
            return None, "range: given more than once"
    span = params.get("range", DEFAULT_SPAN)
    if span not in SPANS:
        return None, f"range: must be {' or '.join(SPANS)} (got {span[:40]!r})"
    return span, ""


def mount(app: FastAPI, dash: "Dash") -> None:
    kept = Snapshots()
    app.state.public_snapshots = kept  # the tests count the builds
    cache = {"Cache-Control": f"public, max-age={MAX_AGE_S}"}

    def data(span: str) -> dict[str, Any]:
        return kept.get(f"data:{span}", lambda: build(dash, span, int(time.time())))

    @app.get("/public", **dash.no_schema)
    def public_page(request: Request) -> Response:
        span, problem = _span(request)
        if span is None:
            return dash.json({"error": problem}, 400)

        def render() -> bytes:
            d = data(span)
            return dash.page(request, "public.html", public=True, data=d, now=d["now"],
                             ranges=list(SPANS), ago=ago, number=number, poll_s=POLL_S,
                             uplot=uplot_dir() is not None, title="City environment").body

        return _answer(kept.get(f"page:{span}", render), "text/html; charset=utf-8", cache)

    @app.get("/public/data.json", **dash.no_schema)
    def public_data(request: Request) -> Response:
        span, problem = _span(request)
        if span is None:
            return dash.json({"error": problem}, 400)
        body = kept.get(f"json:{span}", lambda: json.dumps(
            data(span), separators=(",", ":")).encode())
        return _answer(body, "application/json", cache)


def _answer(body: bytes, media_type: str, cache: dict[str, str]) -> Response:
    """A cached answer with the dashboard's headers (CSP and the rest), cacheable."""
    return Response(body, media_type=media_type, headers={**HEADERS, **cache})
