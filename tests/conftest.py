import os
import shutil
import tempfile

import pytest

from dashboard_support import CHROMEDRIVER, CHROMIUM
from host_tools.broker import Mosquitto
from host_tools.pki import Pki

# The virtual boards the tests' `meterlink vboard` runs announce themselves here, not in the
# user's runtime folder (host_tools/vboard/running.py); subprocesses inherit it.
os.environ["METERLINK_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="meterlink-tests-run-")

# tests/mpy/ runs inside MicroPython (tests/test_micropython_side.py), never under CPython;
# tests/bench/ is `make bench`.
collect_ignore = ["mpy", "bench"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """The tests' fleet CA (`meterlink pki`), with the brokers' certificate issued on first use."""
    ca = Pki(tmp_path_factory.mktemp("pki"))
    ca.init("meterlink test fleet")
    return ca


@pytest.fixture
def broker(tmp_path, pki):
    """A real Mosquitto on a free loopback port, private to the test, speaking TLS with the
    tests' CA as production brokers do (docs/security.md)."""
    with Mosquitto(tmp_path / "broker", tls=pki) as b:
        yield b


@pytest.fixture
def browser(tmp_path):
    """Debian's headless chromium driven by Selenium (tests/dashboard_support.py)."""
    # a missing browser fails the test: the dashboard must be shown to work, not skipped
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
        "no Debian chromium + chromium-driver: `bash host_tools/toolchain/setup.sh browser` " \
        "(make test runs it)"
    from selenium.webdriver import Chrome, ChromeOptions
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def gateway_api(tmp_path, monkeypatch):
    """The API with the dashboard over an outbox with one node, on a loopback port, and uPlot
    nowhere to be found: (base URL, the gateway's folder); the API token is "t0ken".
    In-process (tests/test_gw_dashboard.py, tests/test_gw_dash_login.py)."""
    from gateway import dashboard
    from gateway.webapp import ApiServer
    from gateway.config import parse_config
    from gateway.daemon import Gateway

    monkeypatch.setattr(dashboard, "UPLOT_CACHE", tmp_path / "no-uplot")
    monkeypatch.delenv(dashboard.UPLOT_ENV, raising=False)
    config = parse_config({"sinks": {"history": {}}, "api": {"port": 0, "token": "t0ken"}},
                          base_dir=tmp_path)
    gw = Gateway(config)
    gw.open_storage()
    with gw.box.transaction():
        gw.box.db.execute("INSERT INTO nodes(node, registered, board, sensors, interval_s) "
                          "VALUES ('n1', 1, 'esp32-devkitc', '[]', 60)")
    server = ApiServer(gw)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", tmp_path
    finally:
        server.stop()
        gw.box.close()
