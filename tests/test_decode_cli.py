"""`meterlink decode`, run as the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

METERLINK = str(Path(sys.executable).with_name("meterlink"))
VECTORS = Path(__file__).parent / "vectors"


def meterlink(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([METERLINK, *args], input=stdin, capture_output=True, timeout=30)


def vector(name: str, invalid: bool = False) -> dict:
    folder = VECTORS / "invalid" if invalid else VECTORS
    return json.loads((folder / f"{name}.json").read_text())


def test_console_script_is_installed():
    assert Path(METERLINK).exists(), "run `make setup` (pip install -e .)"


def test_decode_prints_the_senml_pack():
    v = vector("bme280")
    proc = meterlink("decode", v["hex"], "--node", v["node_id"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == v["senml"]
    assert proc.stdout.decode().count("\n") == len(v["senml"])  # one record per line
    assert proc.stderr == b""


def test_decode_accepts_hex_with_spaces_in_several_arguments():
    proc = meterlink("decode", "84 01 19 0412", "1a 69201c00", "a3 01 19 0869 02 19 11ab 03 1a "
                     "00018bcd", "--node", "node-01")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == vector("bme280")["senml"]


def test_decode_relative_time_uses_received_at():
    v = vector("relative-time")
    proc = meterlink("decode", v["hex"], "--node", v["node_id"],
                     "--received-at", str(v["received_at"]))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == v["senml"]


def test_decode_reads_raw_bytes_from_stdin():
    v = vector("batch-3-deltas")
    proc = meterlink("decode", "-", "--node", v["node_id"], stdin=bytes.fromhex(v["hex"]))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == v["senml"]


@pytest.mark.parametrize("name", ["float-value", "unknown-channel-record-1", "trailing-byte",
                                  "version-2"])
def test_decode_rejects_bad_payload_with_its_offset(name):
    v = vector(name, invalid=True)
    proc = meterlink("decode", v["hex"])
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert err.startswith(f"meterlink: decode: offset {v['offset']}: "), err
    assert f"reason: {v['reason']}" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_decode_rejects_bad_payload_from_stdin():
    proc = meterlink("decode", "-", stdin=b"\x84\x01\x00\x1a\x69\x20\x1c\x00\xa1\x01\xf5")
    assert proc.returncode == 2
    assert b"meterlink: decode: offset 10: record 0: channel key 1 value must be an integer, " \
           b"got bool true" in proc.stderr


def test_decode_rejects_bad_hex_naming_the_offset():
    proc = meterlink("decode", "8401zz")
    assert proc.returncode == 2
    assert proc.stderr.decode() == ("meterlink: decode: bad hex at offset 4: 'z' is not a hex "
                                    "digit\n")
    proc = meterlink("decode", "840")
    assert proc.returncode == 2
    assert b"odd number" in proc.stderr


def test_empty_stdin_is_the_empty_payload_error():
    proc = meterlink("decode", "-", stdin=b"")
    assert proc.returncode == 2
    assert b"meterlink: decode: offset 0: payload is empty" in proc.stderr


def test_usage_errors_exit_2():
    assert meterlink("decode").returncode == 2
    proc = meterlink("decode", "00", "--node", "Node!")
    assert proc.returncode == 2 and b"--node" in proc.stderr
    assert meterlink("decode", "00", "--received-at", "soon").returncode == 2
    assert meterlink("no-such-command").returncode == 2
    assert meterlink().returncode == 2


def test_help_lists_the_commands():
    proc = meterlink("--help")
    assert proc.returncode == 0
    assert b"decode" in proc.stdout and b"gateway" in proc.stdout
