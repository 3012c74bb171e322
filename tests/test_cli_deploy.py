"""`meterlink deploy` against the virtual board on a pty, through mpremote's serial transport:
on a stock MicroPython image the firmware's .mpy files land byte for byte, hashes verify, a
second deploy copies nothing, only changed files are copied, stale modules go; on the
meterlink image only boot.py and main.py go on the node and copies of frozen modules are
removed; and the technician's errors (wrong chip, out of flash)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools import cli, cmd_deploy, device, toolchain
from host_tools.vboard.node import default_board
from host_tools.vboard.pty_repl import PtyBoard

pytestmark = pytest.mark.slow
BOARD = "esp32-devkitc"
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
VERSION = re.search(r'FIRMWARE_VERSION = "([^"]+)"',
                    (toolchain.FIRMWARE_DIR / "node.py").read_text()).group(1)


@pytest.fixture
def board(tmp_path):
    """A board flashed with a stock MicroPython image."""
    with PtyBoard(tmp_path / "node", form="mpy") as b:
        yield b


@pytest.fixture
def image_board(tmp_path):
    """A board flashed with the meterlink image (the firmware frozen in)."""
    with PtyBoard(tmp_path / "node") as b:
        yield b


def deploy(capsys, port, *extra):
    rc = cli.main(["deploy", "--board", BOARD, "--port", port, *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_deploy_copies_the_build_then_nothing_then_only_what_changed(board, capsys):
    build = cmd_deploy.firmware_files(device.load_board(BOARD))
    assert "node.mpy" in build and "main.py" in build and "bme280.mpy" in build

    rc, out, err = deploy(capsys, board.port)
    assert rc == 0, err
    assert f"{len(build)} to copy" in out and f"verified {len(build)} files" in out
    for name, data in build.items():
        assert (board.flash / name).read_bytes() == data, name
    assert sorted(json.loads((board.flash / ".deploy.json").read_text())) == sorted(build)
    assert not list(board.flash.glob("*.new"))

    rc, out, err = deploy(capsys, board.port)
    assert rc == 0, err
    assert "0 to copy (0 bytes), 0 to remove" in out
    # the mpremote command line sees the same files with the same hashes
    listing = subprocess.run([MPREMOTE, "connect", board.port, "fs", "sha256sum", ":node.mpy",
                              ":main.py"], capture_output=True, text=True, timeout=60).stdout
    assert hashlib.sha256(build["node.mpy"]).hexdigest() in listing
    assert hashlib.sha256(build["main.py"]).hexdigest() in listing

    # a file changed on the node, and a module an older deploy left behind
    (board.flash / "wire.mpy").write_bytes(b"corrupt")
    (board.flash / "old_driver.mpy").write_bytes(b"stale")
    (board.flash / ".deploy.json").write_text(json.dumps(sorted(build) + ["old_driver.mpy"]))
    (board.flash / "config.json").write_text("{}")  # not the firmware's: never touched
    (board.flash / "cbor.mpy.new").write_bytes(b"half")  # left by an interrupted deploy

    rc, out, err = deploy(capsys, board.port, "--dry-run")
    assert rc == 0, err
    assert "1 to copy" in out and "would copy wire.mpy" in out and "would remove old_driver.mpy" in out
    assert (board.flash / "wire.mpy").read_bytes() == b"corrupt"  # dry run changed nothing

    rc, out, err = deploy(capsys, board.port)
    assert rc == 0, err
    assert "1 to copy" in out and "ok wire.mpy" in out
    assert (board.flash / "wire.mpy").read_bytes() == build["wire.mpy"]
    assert not (board.flash / "old_driver.mpy").exists()
    assert not (board.flash / "cbor.mpy.new").exists()
    assert (board.flash / "config.json").read_text() == "{}"


def test_on_the_meterlink_image_deploy_writes_boot_and_main_and_removes_frozen_copies(
        image_board, capsys):
    board = image_board
    build = cmd_deploy.firmware_files(device.load_board(BOARD))  # the .mpy form's files
    # an earlier deploy (before the node got the image) left .mpy copies of frozen modules,
    # one listed in .deploy.json, one copied by hand: either would load into the heap
    (board.flash / "node.mpy").write_bytes(build["node.mpy"])
    (board.flash / "wire.py").write_text("raise ImportError('shadowing the frozen wire')\n")
    (board.flash / ".deploy.json").write_text(json.dumps(["node.mpy"]))
    (board.flash / "config.json").write_text("{}")
    # and an over-the-air app update (docs/ota.md), which would run instead of the deploy
    (board.flash / "app.json").write_text('{"run": "app0", "v": "9.0.0"}')
    (board.flash / "app0").mkdir()
    (board.flash / "app0" / "node.mpy").write_bytes(build["node.mpy"])

    rc, out, err = deploy(capsys, board.port)
    assert rc == 0, err
    assert f"the meterlink image, firmware {VERSION} frozen in" in out, out
    assert "2 files" in out and "2 to copy" in out and "2 to remove" in out, out
    assert "remove node.mpy (a copy of a frozen module)" in out
    assert "remove wire.py (a copy of a frozen module)" in out
    assert "remove app.json (over-the-air update state: the deployed firmware runs instead)" in out
    assert sorted(p.name for p in board.flash.iterdir()) == [
        ".deploy.json", "app0", "boot.py", "config.json", "main.py"]
    for name in ("boot.py", "main.py"):
        assert (board.flash / name).read_bytes() == (toolchain.FIRMWARE_DIR / name).read_bytes()
    assert json.loads((board.flash / ".deploy.json").read_text()) == ["boot.py", "main.py"]

    rc, out, err = deploy(capsys, board.port)
    assert rc == 0, err
    assert "0 to copy (0 bytes), 0 to remove" in out


def test_deploy_refuses_a_board_file_for_another_chip(tmp_path, capsys):
    with PtyBoard(tmp_path / "s3", board=default_board(chip="esp32s3"), form="mpy") as b:
        rc, out, err = deploy(capsys, b.port)
    assert rc == 1
    assert ("wrong chip: " + b.port + " is an ESP32S3 but board file esp32-devkitc.json is for "
            "an ESP32") in err
    assert not list((tmp_path / "s3" / "flash").iterdir())


def test_deploy_reports_out_of_flash_space(board, capsys):
    # the kernel's ENOSPC, as a full flash filesystem gives it: the file being written is
    # /dev/full
    os.symlink("/dev/full", board.flash / "boot.py.new")
    rc, out, err = deploy(capsys, board.port)
    assert rc == 1
    assert "out of flash space on the node: writing boot.py failed (ENOSPC)" in err
    assert "erase and re-flash" in err
