"""Dashboard login with user names and passwords (gateway/users.py, gateway/dashboard/):
scrypt hashes in a 0600 file, `meterlink gateway user`, sessions kept by the gateway (logout
and a password change end them), the lockout after repeated failures, and no password in any
log. In-process over a real loopback HTTP server; the browser flow is tests/test_gw_dashboard.py.
"""

from __future__ import annotations

import logging
import re
import stat
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from dashboard_support import logged_in
from gateway_support import MELINK

PASSWORD = "correct horse battery staple"


def login(base: str, user: str, password: str):
    """(HTTP status, opener with the session cookie) of a login through the form."""
    import http.cookiejar

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
        http.cookiejar.CookieJar()))
    with opener.open(f"{base}/login", timeout=10) as reply:
        csrf = re.search(r'name="csrf" value="([^"]+)"', reply.read().decode()).group(1)
    body = urllib.parse.urlencode({"csrf": csrf, "user": user, "token": password,
                                   "next": "/"}).encode()
    try:
        with opener.open(f"{base}/login", data=body, timeout=10) as reply:
            return reply.status if reply.url == f"{base}/" else 0, opener
    except urllib.error.HTTPError as exc:
        return exc.code, opener


def fleet_status(opener, base: str) -> str:
    """"fleet" when the opener's session sees the fleet, "login" when sent to log in."""
    with opener.open(f"{base}/", timeout=10) as reply:
        return "fleet" if reply.url == f"{base}/" else "login"


def test_hashes_are_scrypt_salted_and_the_file_is_private(tmp_path):
    from gateway.users import Users, UsersError, check_password, hash_password

    one, two = hash_password(PASSWORD), hash_password(PASSWORD)
    assert one.startswith("scrypt$32768$8$1$") and one != two  # salted
    assert check_password(PASSWORD, one) and not check_password(PASSWORD + "x", one)
    assert not check_password(PASSWORD, "md5$abc") and not check_password(PASSWORD, "junk")
    users = Users(tmp_path / "dashboard-users")
    assert users.add("ana", PASSWORD) is True and users.add("ana", PASSWORD + "!") is False
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    assert PASSWORD not in users.path.read_text()
    assert users.verify("ana", PASSWORD) is None and users.verify("ana", PASSWORD + "!")
    assert users.verify("zed", PASSWORD) is None
    for name, password, problem in (("Ana", PASSWORD, "user name 'Ana'"),
                                    ("api-token", PASSWORD, "reserved"),
                                    ("bob", "short", "at least 10 characters")):
        with pytest.raises(UsersError, match=problem):
            users.add(name, password)
    users.path.write_text("{not json")
    with pytest.raises(UsersError, match="not JSON"):
        users.names()


def test_the_user_command_adds_lists_and_removes(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text('[sinks.file]\n[outbox]\npath = "o.db"\n')

    def run(*words, stdin=""):
        return subprocess.run([MELINK, "gateway", "user", "--config", str(config), *words],
                              input=stdin, capture_output=True, text=True, timeout=60)

    added = run("add", "ana", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0 and added.stdout == "ana: added\n"
    short = run("add", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "password: at least 10 characters" in short.stderr
    listed = run("list")
    assert listed.returncode == 0 and listed.stdout.startswith("ana ")
    assert run("remove", "zed").returncode == 2
    assert run("remove", "ana").stdout == "ana: removed (its sessions have ended)\n"
    assert "no users in" in run("list").stdout
    assert PASSWORD not in (tmp_path / "dashboard-users").read_text()


def test_password_login_sessions_end_on_logout_and_password_change(gateway_api, caplog):
    from gateway.users import Users

    base, folder = gateway_api
    users = Users(folder / "dashboard-users")
    users.add("ana", PASSWORD)
    caplog.set_level(logging.INFO)

    assert login(base, "ana", PASSWORD + "x")[0] == 401
    assert login(base, "zed", PASSWORD)[0] == 401
    status, ana = login(base, "ana", PASSWORD)
    assert status == 200 and fleet_status(ana, base) == "fleet"
    with ana.open(f"{base}/", timeout=10) as reply:
        page = reply.read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    cookie = next(c for c in ana.handlers if isinstance(c, urllib.request.HTTPCookieProcessor)
                  ).cookiejar
    value = next(c.value for c in cookie if c.name == "meterlink_session")
    assert value.startswith("u.") and "ana" not in value  # an id, nothing to read in it

    # a copy of the cookie stops working once its session logs out
    copy = urllib.request.build_opener()
    copy.addheaders = [("Cookie", f"meterlink_session={value}")]
    assert fleet_status(copy, base) == "fleet"
    with ana.open(f"{base}/logout", data=f"csrf={csrf}".encode(), timeout=10) as reply:
        assert reply.url == f"{base}/login"
    assert fleet_status(copy, base) == "login"

    # a new password ends the sessions opened with the old one; removing the user too
    status, ana = login(base, "ana", PASSWORD)
    assert status == 200
    users.add("ana", PASSWORD + " v2")
    assert fleet_status(ana, base) == "login"
    status, ana = login(base, "ana", PASSWORD + " v2")
    assert status == 200 and fleet_status(ana, base) == "fleet"
    users.remove("ana")
    assert fleet_status(ana, base) == "login"

    # the API token still logs in, under the name api-token
    assert fleet_status(logged_in(base, "t0ken"), base) == "fleet"
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "dashboard_login_refused" in logs and "'user': 'zed'" in logs
    assert PASSWORD not in logs and "t0ken" not in logs


def test_ten_failed_logins_lock_the_address_out(gateway_api, monkeypatch):
    from gateway import dashboard
    from gateway.users import Users

    monkeypatch.setattr(dashboard, "REFUSED_DELAY_S", 0)
    base, folder = gateway_api
    Users(folder / "dashboard-users").add("ana", PASSWORD)
    codes = [login(base, "ana", f"guess number {i}")[0] for i in range(dashboard.LOCK_AFTER)]
    assert codes == [401] * dashboard.LOCK_AFTER
    # locked: even the right password is refused now, with the wait given
    status, opener = login(base, "ana", PASSWORD)
    assert status == 429
    with opener.open(f"{base}/login", timeout=10) as reply:
        assert reply.status == 200  # the form itself is still served
