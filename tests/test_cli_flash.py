"""`meterlink flash` (no chip attached): the exact esptool invocation per board file, checked
by esptool's own argument parser, the image checks that refuse a wrong file before anything is
erased, and the default image (`make image`'s build/image/<board>/firmware.bin) when no
--firmware is given."""

from __future__ import annotations

import json
import warnings

import click
import esptool
import pytest

from host_tools import cli, cmd_flash, device, image as image_build


def esptool_parse(argv: list[str]) -> tuple[dict, dict]:
    """esptool's own command-line validation (click), without connecting to a chip."""
    esptool.cli._esp = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = esptool.cli.make_context("esptool", list(argv))
        name, cmd, rest = esptool.cli.resolve_command(ctx, ctx.protected_args + ctx.args)
    sub = cmd.make_context(name, rest, parent=ctx)
    return ctx.params, sub.params


def image(tmp_path, chip_id: int, name="fw.bin"):
    """The first bytes of an ESP image: magic 0xE9, then the extended header's chip id at
    byte 12 (esptool docs, firmware image format)."""
    head = bytearray(4096)
    head[0] = 0xE9
    head[12:14] = chip_id.to_bytes(2, "little")
    path = tmp_path / name
    path.write_bytes(bytes(head))
    return path


CHIP_IDS = {"esp32": 0, "esp32s3": 9, "esp32c3": 5}  # esptool's ids, image header byte 12

EXPECTED = {  # board file -> (chip, offset): from the boards' own documentation
    "esp32-devkitc": ("esp32", "0x1000"),
    "esp32s3-devkitc": ("esp32s3", "0x0"),
    "esp32c3-devkitm": ("esp32c3", "0x0"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_esptool_invocation_per_board_passes_esptool_validation(name, tmp_path):
    board = device.load_board(name)
    fw = image(tmp_path, CHIP_IDS[board.chip])
    chip, offset = EXPECTED[name]
    argv = cmd_flash.esptool_argv(board, "/dev/ttyUSB0", fw, erase=True)
    assert argv == ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800",
                    "write-flash", "--erase-all", offset, str(fw)]
    top, sub = esptool_parse(argv)
    assert top["chip"] == chip and top["port"] == "/dev/ttyUSB0" and top["baud"] == 460800
    assert sub["erase_all"] is True
    [(addr, f)] = sub["addr_filename"]
    f.close()
    assert addr == int(offset, 16) and f.name == str(fw)
    assert cmd_flash.image_chip(fw) == chip
    _, sub = esptool_parse(cmd_flash.esptool_argv(board, "/dev/ttyUSB0", fw, erase=False))
    sub["addr_filename"][0][1].close()
    assert sub["erase_all"] is False


def test_esptool_validation_is_not_vacuous(tmp_path):
    fw = image(tmp_path, 0)
    with pytest.raises(click.BadParameter, match="esp32x"):
        esptool_parse(["--chip", "esp32x", "write-flash", "0x1000", str(fw)])
    with pytest.raises(click.BadParameter, match="No such file"):
        esptool_parse(["--chip", "esp32", "write-flash", "0x1000", str(tmp_path / "none.bin")])


def test_flash_refuses_an_image_for_another_chip(tmp_path, capsys):
    fw = image(tmp_path, 9)  # an ESP32-S3 build
    rc = cli.main(["flash", "--board", "esp32-devkitc", "--firmware", str(fw), "--port", "/x"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"wrong chip: {fw} is built for ESP32S3 but board file esp32-devkitc.json is for ESP32" in err


def test_flash_refuses_a_file_that_is_not_an_esp_image(tmp_path, capsys):
    fw = tmp_path / "firmware.bin"
    fw.write_bytes(b"PK\x03\x04 a zip file")
    rc = cli.main(["flash", "--board", "esp32-devkitc", "--firmware", str(fw), "--port", "/x"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "is not an ESP32 firmware image (it starts with 0x50, an image starts with 0xe9)" in err


def test_every_board_file_loads(tmp_path):
    for path in device.BOARDS_DIR.glob("*.json"):
        b = device.load_board(path.stem)
        assert b.chip == json.loads(path.read_text())["chip"]
        assert b.mpy_arch in ("xtensawin", "rv32imc")


def test_esptool_failures_become_one_line_with_the_fix():
    board = device.load_board("esp32-devkitc")
    # the message esptool's loader raises when --chip does not match the chip it finds
    out = "A fatal error occurred: This chip is ESP32-S3, not ESP32. Wrong chip argument?"
    assert str(cmd_flash.esptool_failure("/dev/ttyUSB0", board, out)) == (
        "wrong chip: /dev/ttyUSB0 is an ESP32S3 but board file esp32-devkitc.json is for an "
        "ESP32; use the board file for this node (`meterlink ports` and boards/*.json)")
    out = "A fatal error occurred: Failed to connect to ESP32: No serial data received."
    assert "hold the board's BOOT button" in str(
        cmd_flash.esptool_failure("/dev/ttyUSB0", board, out))


@pytest.fixture
def image_dir(tmp_path, monkeypatch):
    """`make image`'s output folder, empty, in place of the checkout's build/image."""
    out = tmp_path / "image"
    monkeypatch.setattr(image_build, "IMAGE_DIR", out)
    return out


def made_image(out, board_name: str, chip_id: int):
    """What `make image BOARD=board_name` leaves: OUT/<board>/firmware.bin."""
    (out / board_name).mkdir(parents=True)
    return image(out / board_name, chip_id, name="firmware.bin")


def test_firmware_is_optional():
    args = cli.build_parser().parse_args(["flash", "--board", "esp32-devkitc"])
    assert args.firmware is None


def test_without_firmware_and_without_an_image_it_says_to_run_make_image(image_dir, capsys):
    rc = cli.main(["flash", "--board", "esp32c3-devkitm", "--port", "/x"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == (f"meterlink: no image for esp32c3-devkitm: {image_dir}/esp32c3-devkitm/"
                   f"firmware.bin does not exist; build it with `make image BOARD=esp32c3-devkitm`"
                   f" (docs/board-bringup.md), or pass --firmware FILE.bin\n")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_without_firmware_the_board_image_is_flashed(name, image_dir, tmp_path):
    board = device.load_board(name)
    fw = made_image(image_dir, name, CHIP_IDS[board.chip])
    assert cmd_flash.default_firmware(board) == fw
    chip, offset = EXPECTED[name]
    _, sub = esptool_parse(cmd_flash.esptool_argv(board, "/dev/ttyUSB0", fw, erase=False))
    [(addr, f)] = sub["addr_filename"]
    f.close()
    assert addr == int(offset, 16) and f.name == str(fw)


def test_the_default_image_passes_the_chip_check(image_dir, tmp_path, capsys):
    made_image(image_dir, "esp32s3-devkitc", 9)
    missing = tmp_path / "no-such-port"
    rc = cli.main(["flash", "--board", "esp32s3-devkitc", "--port", str(missing)])
    # past the image checks, it stops at the port: nothing to erase or write
    assert rc == 1
    assert capsys.readouterr().err == "meterlink: " + device.ERR_PORT_MISSING.format(
        port=missing) + "\n"


def test_the_default_image_gets_the_chip_check_too(image_dir, capsys):
    fw = made_image(image_dir, "esp32-devkitc", 5)  # an ESP32-C3 image in the ESP32's place
    rc = cli.main(["flash", "--board", "esp32-devkitc", "--port", "/x"])
    assert rc == 2
    assert (f"wrong chip: {fw} is built for ESP32C3 but board file esp32-devkitc.json is for "
            f"ESP32") in capsys.readouterr().err
