"""The operator dashboard: server-rendered pages over `gateway.api.Api`, for a browser.

    mount(app, api, pages)   # gateway.webapp.make_app calls it; adds the routes below

    GET  /login                    the login form (the API token)
    POST /login                    token right: a session cookie, then 303 to the page asked for
    POST /logout                   the session cookie cleared
    GET  /dash/static/{file}       our CSS and JS; /dash/uplot/{file}: uPlot (see below)

and the pages, one module each (`gateway.webapp.PAGES`), every one `mount(app, dash)` with the
`Dash` below (the pages import this module, so this module does not import them: the app
hands them to `mount`):
fleet.py (the fleet with its map, the node pages), alarms.py (open and recent alarms,
acknowledged with a note), operations.py (quarantine, dead letters with replay, commands) and
public.py (`/public`: environment data per district for anyone, no login). A page's own data
is JSON under `/dash/`, authenticated by the session, not the bearer token.

Login is a user name and password (gateway/users.py: scrypt hashes in `dashboard-users`,
managed with `meterlink gateway user`), or the `[api] token` with no user name. A logged-in
session lives in the gateway's memory (`SessionStore`): the cookie holds a random id, logout
forgets it, and removing a user or changing its password ends its sessions; a restart ends
them all. The login form's own session (for its CSRF token) is a signed cookie that is not
stored (`Sessions`: HMAC-SHA256 over a key derived from a random secret, `dashboard-secret`,
mode 0600, beside the token file), so anonymous visitors cost the gateway no memory. Cookies
are HttpOnly and SameSite=Strict (Secure over https). Every POST form carries the session's
CSRF token. Ten failed logins from one address in ten minutes lock that address out for the
rest of the ten minutes (`LoginGuard`); each refusal waits half a second. Passwords and the
token are never logged; user names and client addresses are.

The charts are uPlot from the npm registry, which `make setup` puts in
`.cache/web/node_modules/uplot/dist` (host_tools/toolchain/setup.sh). A gateway installed by
pip has no `.cache`: `METERLINK_UPLOT_DIR` names a folder holding `uPlot.iife.min.js` and
`uPlot.min.css`. Without them the node page shows the values and says how to get the charts.
The fleet page's map is Leaflet, the same way: `.cache/web/node_modules/leaflet/dist`, else
`METERLINK_LEAFLET_DIR` (`leaflet.js`, `leaflet.css`, `images/`), served at `/dash/leaflet/`.
Its tiles come from `[dashboard] map_tiles`: that host, and only on the fleet page, is added to
the Content-Security-Policy's img-src (`headers()`); every other page keeps `HEADERS`.

These routes are left out of the OpenAPI description: they are pages, not the API.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Query, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from gateway.logfmt import kv
from gateway.users import UsersError

if TYPE_CHECKING:
    from types import ModuleType

    from gateway.api import Api

log = logging.getLogger("meterlink.gateway.dashboard")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
UPLOT_ENV = "METERLINK_UPLOT_DIR"
UPLOT_CACHE = HERE.parent.parent / ".cache" / "web" / "node_modules" / "uplot" / "dist"
UPLOT_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
LEAFLET_ENV = "METERLINK_LEAFLET_DIR"
LEAFLET_CACHE = HERE.parent.parent / ".cache" / "web" / "node_modules" / "leaflet" / "dist"
LEAFLET_FILES = ("leaflet.js", "leaflet.css")
LEAFLET_IMAGES = ("marker-icon.png", "marker-icon-2x.png", "marker-shadow.png", "layers.png",
                  "layers-2x.png")  # in images/, named by leaflet.css and its default icon
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}  # files of STATIC served
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(css|js)$")
# the page modules: each has mount(app, dash)

COOKIE = "meterlink_session"
SESSION_S = 12 * 3600
ANON_S = 3600  # the login form's session, for its CSRF token
REFUSED_DELAY_S = 0.5  # a wrong token waits this long: guessing is slow
POLL_S = 3
TOKEN_USER = "api-token"  # who the API token's holder is in the dashboard (acknowledgements)
SID_PREFIX = "u."  # a logged-in session's cookie: SID_PREFIX + its random id (SessionStore)
MAX_SESSIONS = 1000
LOCK_AFTER = 10  # failed logins from one address within LOCK_WINDOW_S lock it out
LOCK_WINDOW_S = 600
RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}  # the node page's chart spans
RANGE = "^(1h|24h|7d)$"
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                      "frame-ancestors 'none'; form-action 'self'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
# SenML unit -> (unit shown, factor); a channel's own entry wins over its unit's
SHOWN_UNITS = {"Cel": ("°C", 1), "%RH": ("%RH", 1), "Pa": ("hPa", 0.01), "m3": ("m³", 1),
               "m3/s": ("L/s", 1e3), "V": ("V", 1), "dBm": ("dBm", 1),
               "kg/m3": ("µg/m³", 1e9), "S/m": ("µS/cm", 1e4), "J": ("kWh", 1 / 3.6e6),
               "pH": ("pH", 1), "NTU": ("NTU", 1), "%": ("%", 1), "/": ("ppm", 1e6),
               "m": ("mm", 1e3), "m/s": ("mm/h", 3.6e6), "Bspl": ("dB", 10)}
# methane is % of the lower explosive limit, not of the volume; the noise channels are
# A-weighted
SHOWN_CHANNELS = {"free_chlorine": ("mg/L", 1e3), "pressure": ("hPa", 0.01),
                  "methane": ("% LEL", 1), "noise_laeq": ("dB(A)", 10),
                  "noise_lamax": ("dB(A)", 10)}


def uplot_dir() -> Optional[Path]:
    """The folder uPlot's files are served from: $METERLINK_UPLOT_DIR, else the one
    `make setup` fills; None when neither has both files."""
    env = os.environ.get(UPLOT_ENV)
    for folder in ([Path(env)] if env else []) + [UPLOT_CACHE]:
        if all((folder / name).is_file() for name in UPLOT_FILES):
            return folder
    return None


def leaflet_dir() -> Optional[Path]:
    """The folder Leaflet's files are served from: $METERLINK_LEAFLET_DIR, else the one
    `make setup` fills; None when neither has leaflet.js and leaflet.css."""
    env = os.environ.get(LEAFLET_ENV)
    for folder in ([Path(env)] if env else []) + [LEAFLET_CACHE]:
        if all((folder / name).is_file() for name in LEAFLET_FILES):
            return folder
    return None


def headers(*, img_src: tuple[str, ...] = ()) -> dict[str, str]:
    """The headers of a page: `HEADERS`, with its Content-Security-Policy's img-src widened by
    `img_src` (the fleet page's map tiles) for that page alone."""
    if not img_src:
        return HEADERS
    csp = HEADERS["Content-Security-Policy"].replace(
        "img-src 'self' data:", "img-src 'self' data: " + " ".join(img_src), 1)
    return {**HEADERS, "Content-Security-Policy": csp}


def shown_units() -> dict[str, list]:
    """channel name -> [unit shown, factor from the SenML value], from the channel table."""
    from gateway.channels import default_table

    out: dict[str, list] = {}
    for ch in default_table():
        unit, factor = SHOWN_CHANNELS.get(ch.name) or SHOWN_UNITS.get(ch.unit, (ch.unit, 1))
        out[ch.name] = [unit, factor]
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed, unstored sessions: `payload.mac`, the payload base64url JSON
    `{"exp", "csrf", "user"}`: `user` the operator's name, "" for the login form's anonymous
    session."""

    def __init__(self, secret: bytes, token: bytes) -> None:
        self._key = hmac.new(secret, b"meterlink dashboard session\0" + token,
                             hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Sessions(<signed cookies>)"

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def make(self, *, user: str, now: float) -> tuple[str, dict[str, Any]]:
        data = {"exp": int(now + (SESSION_S if user else ANON_S)),
                "csrf": secrets.token_urlsafe(24), "user": user}
        payload = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}", data

    def read(self, cookie: Optional[str], now: float) -> Optional[dict[str, Any]]:
        """The session in a cookie, or None (no cookie, a bad signature, expired)."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or \
                data["exp"] < now:
            return None
        return data


def load_secret(path: Path) -> bytes:
    """The session secret in `path`, made (32 random bytes as hex, mode 0600) the first time."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        if len(text) < 32:
            raise ValueError(f"{path}: the dashboard's session secret is too short "
                             f"(delete it to make a new one)") from None
        return text.encode()
    text = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    log.info("dashboard_secret_created", extra=kv(path=str(path)))
    return text.encode()


class SessionStore:
    """Logged-in sessions, kept in the gateway's memory: the cookie holds a random id only.
    Logging out forgets the id (a copy of the cookie is then worthless too); so does a
    restart of the gateway (everyone logs in again). At most `limit` sessions: the oldest go
    first."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"SessionStore({len(self._live)} live)"

    def make(self, user: str, fingerprint: Optional[str], now: float) -> tuple[str, dict]:
        sid = secrets.token_urlsafe(32)
        data = {"exp": int(now + SESSION_S), "csrf": secrets.token_urlsafe(24), "user": user,
                "fp": fingerprint}
        with self._lock:
            for old in [k for k, v in self._live.items() if v["exp"] < now]:
                del self._live[old]
            while len(self._live) >= self.limit:
                del self._live[next(iter(self._live))]
            self._live[sid] = data
        return SID_PREFIX + sid, data

    def read(self, cookie: str, now: float) -> Optional[dict[str, Any]]:
        with self._lock:
            data = self._live.get(cookie[len(SID_PREFIX):])
        return data if data and data["exp"] >= now else None

    def drop(self, cookie: str) -> None:
        with self._lock:
            self._live.pop(cookie[len(SID_PREFIX):], None)


class LoginGuard:
    """Failed logins per client address: after `LOCK_AFTER` in `LOCK_WINDOW_S` seconds the
    address is refused until the window has passed (a password is not guessed by trying)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, list[float]] = {}

    def __repr__(self) -> str:
        return f"LoginGuard({len(self._failed)} addresses)"

    def wait_s(self, client: str, now: float) -> float:
        """Seconds until `client` may try again (0: now)."""
        with self._lock:
            recent = [t for t in self._failed.get(client, ()) if t > now - LOCK_WINDOW_S]
            if recent:
                self._failed[client] = recent
            else:
                self._failed.pop(client, None)
        return recent[0] + LOCK_WINDOW_S - now if len(recent) >= LOCK_AFTER else 0.0

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            if len(self._failed) > 10000:  # a flood of addresses: start again
                self._failed.clear()
            self._failed.setdefault(client, []).append(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failed.pop(client, None)


def ago(seconds: float) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`: static/common.js's `ago`, for the pages
    rendered here."""
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s ago"
    if s < 90 * 60:
        return f"{round(s / 60)} min ago"
    if s < 36 * 3600:
        return f"{round(s / 3600)} h ago"
    return f"{round(s / 86400)} d ago"


def _safe_next(target: Optional[str]) -> str:
    """A page of this site to go to after login; anything else (another host) is `/`."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


class Dash:
    """What every page module of the dashboard uses: the API (`api`), the templates, the
    session rules. Each page module has `mount(app, dash)` (`gateway.webapp.PAGES`)."""

    no_schema = {"include_in_schema": False}

    def __init__(self, api: "Api") -> None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        from gateway.api import token_path
        from gateway.users import Users, users_path

        self.api = api
        self.sessions = Sessions(load_secret(token_path(api.gateway.config).with_name(
            "dashboard-secret")), api.token)
        self.env = Environment(loader=FileSystemLoader(TEMPLATES),
                               autoescape=select_autoescape(), trim_blocks=True,
                               lstrip_blocks=True)
        self.units = shown_units()
        self.users = Users(users_path(api.gateway.config))
        self.store = SessionStore()
        self.guard = LoginGuard()

    def __repr__(self) -> str:
        return f"Dash({self.api!r})"

    def page(self, request: Request, name: str, status: int = 200, *,
             img_src: tuple[str, ...] = (),
             session: Optional[dict[str, Any]] = None, **context: Any) -> HTMLResponse:
        """Template `name` rendered; `session` the visitor's (None: the signed-out header)."""
        html = self.env.get_template(name).render(
            request=request, signed_in=bool(session and session.get("user")),
            csrf=session["csrf"] if session else "", **context)
        return HTMLResponse(html, status_code=status, headers=headers(img_src=img_src))

    @staticmethod
    def json(data: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers=HEADERS)

    def set_cookie(self, request: Request, response: Response, value: str,
                   max_age: int) -> None:
        response.set_cookie(COOKIE, value, max_age=max_age, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    def session_of(self, request: Request) -> Optional[dict[str, Any]]:
        """The request's session: a logged-in one (SessionStore; it ends when its user is
        removed or given a new password), or the login form's signed anonymous one."""
        cookie = request.cookies.get(COOKIE) or ""
        now = time.time()
        if not cookie.startswith(SID_PREFIX):
            return self.sessions.read(cookie, now)
        session = self.store.read(cookie, now)
        if session and session["user"] != TOKEN_USER:
            try:
                current = self.users.current(session["user"])
            except UsersError as exc:
                log.error("dashboard_users_unreadable", extra=kv(error=str(exc)))
                current = None
            if current != session["fp"]:
                self.store.drop(cookie)
                return None
        return session

    def user(self, request: Request) -> Optional[dict[str, Any]]:
        """The logged-in session of the request, or None."""
        s = self.session_of(request)
        return s if s and isinstance(s.get("user"), str) and s["user"] else None

    @staticmethod
    def to_login(request: Request) -> RedirectResponse:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here, safe='/')}", status_code=303)

    def not_logged_in(self) -> JSONResponse:
        return self.json({"error": "log in first: /login"}, 401)

    @staticmethod
    async def form(request: Request, max_fields: int = 10) -> dict[str, str]:
        """A POSTed form's fields (the first value of each)."""
        try:
            raw = await request.body()
        except ClientDisconnect:  # the browser went away mid-body: nothing to answer
            raise StarletteHTTPException(400, "the request body did not arrive") from None
        body = raw.decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(body, max_num_fields=max_fields).items()}

    @staticmethod
    def csrf_ok(session: Optional[dict[str, Any]], fields: dict[str, str]) -> bool:
        return bool(session) and hmac.compare_digest(
            fields.get("csrf", "").encode(), str(session["csrf"]).encode())

    def csrf_refused(self) -> JSONResponse:
        return self.json({"error": "csrf: the form's token does not match the session"}, 403)


def mount(app: FastAPI, api: Optional["Api"], pages: "tuple[ModuleType, ...]") -> None:
    """Adds the dashboard's routes to `app`: login, then each of `pages` (a module with
    `mount(app, dash)`), then the files (none without a gateway: the OpenAPI build)."""
    if api is None:
        return
    dash = Dash(api)
    no_schema = dash.no_schema

    def login_form(request: Request, next_url: str, error: str = "",
                   status: int = 200) -> HTMLResponse:
        cookie, session = dash.sessions.make(user="", now=time.time())
        response = dash.page(request, "login.html", status, session=session, next=next_url,
                             error=error, title="Log in")
        dash.set_cookie(request, response, cookie, ANON_S)
        return response

    # ---- login -------------------------------------------------------------------------------

    @app.get("/login", **no_schema)
    def login_page(request: Request, next: Optional[str] = Query(None)) -> Response:
        if dash.user(request):
            return RedirectResponse(_safe_next(next), status_code=303)
        return login_form(request, _safe_next(next))

    @app.post("/login", **no_schema)
    async def login(request: Request) -> Response:
        fields = await dash.form(request)
        next_url = _safe_next(fields.get("next"))
        client = request.client.host if request.client else "-"
        if not dash.csrf_ok(dash.session_of(request), fields):
            log.warning("dashboard_csrf_refused", extra=kv(client=client, path="/login"))
            return login_form(request, next_url, "The form had expired: log in again.", 403)
        now = time.time()
        wait = dash.guard.wait_s(client, now)
        if wait:
            log.warning("dashboard_login_locked", extra=kv(client=client, wait_s=round(wait)))
            return login_form(request, next_url, f"Too many failed logins from this address: "
                                                 f"try again in {wait / 60:.0f} min.", 429)
        name = fields.get("user", "").strip()
        secret = fields.get("token", "")
        if name:  # a user name and its password (gateway/users.py)
            try:
                fingerprint = await asyncio.to_thread(dash.users.verify, name, secret)
            except UsersError as exc:
                log.error("dashboard_users_unreadable", extra=kv(error=str(exc)))
                return login_form(request, next_url, "The gateway's user file cannot be read: "
                                                     "see its log.", 503)
            refusal = "Wrong user name or password."
        else:  # the API token
            token = secret.strip().encode()
            fingerprint = "" if token and hmac.compare_digest(token, api.token) else None
            refusal = "That is not the gateway's API token."
        if fingerprint is None:
            dash.guard.failed(client, now)
            log.warning("dashboard_login_refused", extra=kv(client=client, user=name or None))
            await asyncio.sleep(REFUSED_DELAY_S)
            return login_form(request, next_url, refusal, 401)
        dash.guard.succeeded(client)
        user = name or TOKEN_USER
        log.info("dashboard_login", extra=kv(client=client, user=user))
        cookie, _ = dash.store.make(user, fingerprint or None, time.time())
        response = RedirectResponse(next_url, status_code=303)
        dash.set_cookie(request, response, cookie, SESSION_S)
        return response

    @app.post("/logout", **no_schema)
    async def logout(request: Request) -> Response:
        fields = await dash.form(request)
        session = dash.user(request)
        if not dash.csrf_ok(session, fields):
            return dash.csrf_refused()
        dash.store.drop(request.cookies.get(COOKIE) or "")
        log.info("dashboard_logout", extra=kv(user=session["user"]))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ---- the pages ---------------------------------------------------------------------------

    for page in pages:
        page.mount(app, dash)

    # ---- files ---------------------------------------------------------------------------------

    @app.get("/dash/static/{name}", **no_schema)
    def static(name: str) -> Response:
        kind = STATIC_TYPES.get(Path(name).suffix)
        if not kind or not STATIC_NAME.match(name) or not (STATIC / name).is_file():
            return JSONResponse({"error": f"no static file {name[:40]!r}"}, status_code=404)
        return FileResponse(STATIC / name, media_type=kind,
                            headers={"Cache-Control": "no-cache"})

    def leaflet_file(name: str, known: tuple[str, ...], sub: str = "") -> Response:
        folder = leaflet_dir()
        path = folder / sub / name if folder is not None else None
        if name not in known or path is None or not path.is_file():
            return JSONResponse({"error": f"no Leaflet file {name[:40]!r}: make setup, or set "
                                          f"{LEAFLET_ENV}"}, status_code=404)
        kind = {".js": "text/javascript", ".css": "text/css"}.get(path.suffix, "image/png")
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.get("/dash/leaflet/{name}", **no_schema)
    def leaflet(name: str) -> Response:
        return leaflet_file(name, LEAFLET_FILES)

    @app.get("/dash/leaflet/images/{name}", **no_schema)
    def leaflet_image(name: str) -> Response:
        return leaflet_file(name, LEAFLET_IMAGES, "images")

    @app.get("/dash/uplot/{name}", **no_schema)
    def uplot(name: str) -> Response:
        folder = uplot_dir()
        if name not in UPLOT_FILES or folder is None:
            return JSONResponse({"error": f"uPlot is not installed: make setup, or set "
                                          f"{UPLOT_ENV}"}, status_code=404)
        return FileResponse(folder / name, media_type="text/css" if name.endswith(".css")
                            else "text/javascript", headers={"Cache-Control": "max-age=3600"})
