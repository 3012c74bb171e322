import pytest

from host_tools.broker import Mosquitto


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto on a free loopback port, private to the test."""
    with Mosquitto(tmp_path / "broker") as b:
        yield b
