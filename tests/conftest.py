import os
import tempfile

import pytest

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
