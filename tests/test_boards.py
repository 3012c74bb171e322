"""boards/*.json: each board file is complete and agrees with the chip's documented facts
(Espressif technical reference manuals / ESP-IDF sleep and PCNT docs), so a pin a node relies on
for counting or waking is one the chip can really use that way. The facts are written here by
hand from those documents, independently of the board files."""

import json
import re
from pathlib import Path

import pytest

BOARDS = Path(__file__).resolve().parent.parent / "boards"
FILES = sorted(BOARDS.glob("*.json"))

# chip -> (mpy-cross arch, esptool offset of the bootloader, PCNT units, deep-sleep wake GPIOs,
#          ADC1 GPIOs usable while Wi-Fi runs, highest GPIO)
CHIPS = {
    "esp32": ("xtensawin", "0x1000", 8,
              {0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39},
              {32, 33, 34, 35, 36, 37, 38, 39}, 39),
    "esp32s3": ("xtensawin", "0x0", 4, set(range(0, 22)), set(range(1, 11)), 48),
    "esp32c3": ("rv32imc", "0x0", 0, set(range(0, 6)), set(range(0, 5)), 21),
}
KEYS = {"name", "description", "chip", "mpy_arch", "flash_offset", "idf_board", "heap_budget_kb",
        "pcnt_units", "wake_pins", "adc_pins", "i2c", "uart", "onewire", "pulse", "adc", "drivers"}
# a board definition for MicroPython's ESP32 port (boards/idf/<idf_board>/, `make image`)
IDF_BOARD_FILES = ("mpconfigboard.cmake", "mpconfigboard.h", "sdkconfig.board", "manifest.py",
                   "partitions.csv")
SENSORS = (BOARDS.parent / "firmware" / "sensors.py").read_text()
DRIVERS = set(re.findall(r'"(\w+)"', re.search(r"^DRIVERS = \(([^)]*)\)", SENSORS, re.M).group(1)))


def test_the_three_reference_boards_exist():
    assert {f.stem for f in FILES} >= {"esp32-devkitc", "esp32s3-devkitc", "esp32c3-devkitm"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_board_file_matches_its_chip(path):
    b = json.loads(path.read_text())
    assert set(b) == KEYS, set(b) ^ KEYS
    assert b["name"] == path.stem
    arch, offset, pcnt, wake, adc, top = CHIPS[b["chip"]]
    assert (b["mpy_arch"], b["flash_offset"], b["pcnt_units"]) == (arch, offset, pcnt)
    assert set(b["wake_pins"]) <= wake
    assert set(b["adc_pins"]) <= adc
    assert b["heap_budget_kb"] >= 96
    # the pulse inputs must wake the node from deep sleep, or pulses are lost while it sleeps
    for role in ("a", "b", "tamper"):
        assert b["pulse"][role] in b["wake_pins"], role
    for role, pin in b["adc"].items():
        assert pin in b["adc_pins"], role
    used = [b["pulse"][r] for r in ("a", "b", "tamper")] + list(b["adc"].values())
    used += [b["onewire"]["pin"]]
    for bus in b["i2c"].values():
        used += [bus["scl"], bus["sda"]]
    for bus in b["uart"].values():
        used += [bus["tx"], bus["rx"]]
    assert all(0 <= p <= top for p in used)
    assert len(used) == len(set(used)), "a GPIO is given two jobs"
    for d in b["drivers"]:
        assert d in DRIVERS, d


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_board_file_names_its_board_definition_for_the_esp32_port(path):
    b = json.loads(path.read_text())
    folder = BOARDS / "idf" / b["idf_board"]
    assert folder.is_dir(), folder
    for name in IDF_BOARD_FILES:
        assert (folder / name).is_file(), name
    # built for the board's chip: the ESP-IDF target, and the MCU name MicroPython reports at
    # the end of sys.implementation._machine ("... with ESP32S3"), where the meterlink tools
    # read the chip a node has
    cmake = (folder / "mpconfigboard.cmake").read_text()
    assert re.search(r"^set\(IDF_TARGET (\w+)\)", cmake, re.M).group(1) == b["chip"]
    header = (folder / "mpconfigboard.h").read_text()
    mcu = re.search(r'^#define MICROPY_HW_MCU_NAME\s+"([^"]+)"', header, re.M).group(1)
    assert mcu.lower().replace("-", "") == b["chip"]
    # the flash size it is built for is the module's
    sdkconfig = (folder / "sdkconfig.board").read_text()
    [mb] = re.findall(r"^CONFIG_ESPTOOLPY_FLASHSIZE_(\d+)MB=y$", sdkconfig, re.M)
    assert f"{mb} MB flash" in b["description"]


def test_each_board_definition_belongs_to_one_board_file():
    named = [json.loads(p.read_text())["idf_board"] for p in FILES]
    assert len(named) == len(set(named))
    folders = {p.name for p in (BOARDS / "idf").iterdir() if p.is_dir()}
    assert folders == set(named)
