import pytest

from host_tools.broker import Mosquitto

# tests/mpy/ runs inside MicroPython (tests/test_micropython_side.py), never under CPython;
# tests/bench/ is `make bench`.
collect_ignore = ["mpy", "bench"]


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto on a free loopback port, private to the test."""
    with Mosquitto(tmp_path / "broker") as b:
        yield b
