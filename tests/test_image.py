"""`make image` and the board definitions it builds (boards/idf/*/), without ESP-IDF:

- what the build needs and lacks is one line on stderr that names the fix (make, and the
  module it runs); the build itself needs ESP-IDF, which is not installed where the suite
  runs, so it is not run here (docs/board-bringup.md says how to check an image);
- each board manifest, run by MicroPython's own tools/manifestfile.py as the ESP32 build runs
  it, freezes the port's modules and the firmware by the manifest the unix test build freezes;
- each partition table keeps ESP-IDF's rules (components/partition_table/gen_esp32part.py and
  the partition table docs, v5.2.2) and has the two OTA slots the product needs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from host_tools import firmware_build, image, toolchain

ROOT = toolchain.ROOT
BOARDS = ROOT / "boards"
FOLDERS = sorted(p for p in (BOARDS / "idf").iterdir() if p.is_dir())
MPY_DIR = toolchain.CACHE_DIR / f"micropython-{toolchain.MICROPYTHON_VERSION}"
ENV_WITHOUT = ("IDF_PATH", "MICROPY_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def board_files() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(BOARDS.glob("*.json"))}


def make_image(*args: str) -> subprocess.CompletedProcess:
    """`make image ...` as a technician runs it, in a shell without ESP-IDF set up."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_WITHOUT}
    return subprocess.run(["make", "image", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------------------ make image
def test_make_image_without_esp_idf_is_one_line_naming_esp_idf_and_its_version():
    done = make_image("BOARD=esp32-devkitc")
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "meterlink image: ESP-IDF not found (IDF_PATH is not set)" in line
    assert "install ESP-IDF v5.2.2" in line and "export.sh" in line
    assert "docs/board-bringup.md" in line


def test_make_image_with_an_unknown_board_is_one_line_naming_the_boards():
    done = make_image("BOARD=esp32-wroom-99")
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "meterlink image: no board 'esp32-wroom-99': the boards are " in line
    for name, b in board_files().items():
        assert name in line and b["idf_board"] in line


def run_image(capsys, *argv: str) -> tuple[int, str, str]:
    rc = image.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_idf(monkeypatch):
    for name in ENV_WITHOUT:
        monkeypatch.delenv(name, raising=False)


def test_the_module_prints_exactly_one_line(no_idf, capsys):
    rc, out, err = run_image(capsys, "--board", "esp32-devkitc")
    assert (rc, out) == (1, "")
    assert err == ("meterlink image: ESP-IDF not found (IDF_PATH is not set): install ESP-IDF "
                   "v5.2.2 (MicroPython 1.25.0 supports v5.2-v5.4) and run `. $IDF_PATH/"
                   "export.sh` (see docs/board-bringup.md, \"Building the node image\")\n")


def test_an_unknown_board_exits_2(no_idf, capsys):
    rc, out, err = run_image(capsys, "--board", "nope")
    assert (rc, out) == (2, "")
    assert err.startswith("meterlink image: no board 'nope': the boards are esp32-devkitc, ")


def test_board_accepts_the_board_definition_folder(no_idf, capsys):
    rc, _, err = run_image(capsys, "--check", "--board", "METERLINK_ESP32C3")
    assert rc == 1 and "ESP-IDF not found" in err  # past the board: it was found
    board, folder = image.find_board("METERLINK_ESP32C3")
    assert board.name == "esp32c3-devkitm" and folder == BOARDS / "idf" / "METERLINK_ESP32C3"


# Stand-ins for what a machine with ESP-IDF has: just enough for the checks to pass.
def fake_idf(tmp_path, version=(5, 2, 2), on_path=True) -> Path:
    idf = tmp_path / "esp-idf"
    header = idf / image.IDF_VERSION_H
    header.parent.mkdir(parents=True)
    header.write_text("".join(f"#define ESP_IDF_VERSION_{k}   {v}\n"
                              for k, v in zip(("MAJOR", "MINOR", "PATCH"), version)))
    if on_path:
        executable(tmp_path / "bin" / "idf.py", "echo idf.py stand-in\n")
    return idf


def fake_micropython(tmp_path, version=(1, 25, 0), submodules=True) -> Path:
    mp = tmp_path / "micropython"
    (mp / "py").mkdir(parents=True)
    (mp / "py" / "mpconfig.h").write_text("".join(
        f"#define MICROPY_VERSION_{k} {v}\n" for k, v in zip(("MAJOR", "MINOR", "MICRO"), version)))
    (mp / "ports" / "esp32").mkdir(parents=True)
    (mp / "ports" / "esp32" / "Makefile").write_text("# stand-in\n")
    for sub in image.MP_SUBMODULES if submodules else ():
        (mp / sub).mkdir(parents=True)
        (mp / sub / "README.md").write_text("stand-in\n")
    return mp


def executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def env(tmp_path, monkeypatch, no_idf):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return monkeypatch


def test_an_unsupported_esp_idf_names_the_supported_ones(tmp_path, env, capsys):
    env.setenv("IDF_PATH", str(fake_idf(tmp_path, version=(5, 1, 4))))
    rc, _, err = run_image(capsys, "--check", "--board", "esp32-devkitc")
    assert rc == 1
    assert (f"meterlink image: ESP-IDF v5.1.4 in IDF_PATH={tmp_path}/esp-idf: MicroPython 1.25.0 "
            f"supports v5.2, v5.3 and v5.4; install v5.2.2") in err


def test_esp_idf_without_its_environment_says_to_source_export_sh(tmp_path, env, capsys):
    env.setenv("IDF_PATH", str(fake_idf(tmp_path, on_path=False)))
    env.setenv("PATH", "/usr/bin:/bin")
    rc, _, err = run_image(capsys, "--check", "--board", "esp32-devkitc")
    assert rc == 1
    assert err == (f"meterlink image: idf.py is not on PATH: run `. {tmp_path}/esp-idf/export.sh` "
                   f"in this shell first (ESP-IDF v5.2.2)\n")


def test_without_micropython_it_names_the_checkout_to_make(tmp_path, env, capsys):
    env.setenv("IDF_PATH", str(fake_idf(tmp_path)))
    rc, _, err = run_image(capsys, "--check", "--board", "esp32-devkitc")
    assert rc == 1
    [line] = err.splitlines()
    assert line.startswith("meterlink image: MicroPython 1.25.0 source not found (MICROPY_DIR is "
                           "not set): `git clone -b v1.25.0 https://github.com/micropython/"
                           "micropython; make -C micropython/mpy-cross; make -C micropython/"
                           "ports/esp32 submodules`")


def test_the_debian_source_is_refused_for_its_missing_submodules(tmp_path, env, capsys):
    assert (MPY_DIR / "ports" / "esp32").is_dir(), "run `make setup` (it unpacks the source)"
    env.setenv("IDF_PATH", str(fake_idf(tmp_path)))
    env.setenv("MICROPY_DIR", str(MPY_DIR))
    rc, _, err = run_image(capsys, "--check", "--board", "esp32-devkitc")
    assert rc == 1
    assert (f"meterlink image: MICROPY_DIR={MPY_DIR} lacks the submodules lib/micropython-lib, "
            f"lib/berkeley-db-1.xx, lib/tinyusb: it is no git checkout") in err


def test_another_micropython_release_is_refused(tmp_path, env, capsys):
    env.setenv("IDF_PATH", str(fake_idf(tmp_path)))
    env.setenv("MICROPY_DIR", str(fake_micropython(tmp_path, version=(1, 24, 1))))
    rc, _, err = run_image(capsys, "--check", "--board", "esp32-devkitc")
    assert rc == 1
    assert "is MicroPython 1.24.1, the project pins 1.25.0" in err
    assert "checkout v1.25.0" in err


# ------------------------------------------------------------------------------ manifests
def load_manifestfile():
    """MicroPython's own tools/manifestfile.py, of the pinned release (the Debian source)."""
    path = MPY_DIR / "tools" / "manifestfile.py"
    assert path.is_file(), f"{path} missing: run `make setup` (it unpacks the source)"
    spec = importlib.util.spec_from_file_location("manifestfile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


manifestfile = load_manifestfile()


class Manifest(manifestfile.ManifestFile):
    """The manifest tool as the ESP32 build runs it (freeze mode), except for one thing the
    Debian source cannot give: micropython-lib. $(MPY_LIB_DIR) names a folder that does not
    exist, and a require() that fails only because of that is recorded instead of raised;
    every other error is raised as the build would."""

    def __init__(self, tmp_path, port: str, board_dir: Path | None = None):
        self.lib = tmp_path / "micropython-lib-is-absent"
        super().__init__(manifestfile.MODE_FREEZE, {
            "MPY_DIR": str(MPY_DIR), "MPY_LIB_DIR": str(self.lib),
            "PORT_DIR": str(MPY_DIR / "ports" / port),
            "BOARD_DIR": str(board_dir) if board_dir else None})
        self.required = []

    def require(self, name, version=None, pypi=None, library=None, **kwargs):
        try:
            super().require(name, version, pypi, library, **kwargs)
        except ValueError as exc:
            if self.lib.exists() or "not found in any known library" not in str(exc):
                raise
            self.required.append(name)

    def frozen(self, manifest: Path) -> dict[str, tuple[str, int | None]]:
        """target path -> (source file, opt level) of everything `manifest` freezes."""
        self.execute(str(manifest))
        out = {}
        for f in self.files():
            assert f.target_path not in out, f"{f.target_path} frozen twice"
            out[f.target_path] = (os.path.realpath(f.full_path), f.opt)
        return out


def firmware_frozen(frozen: dict) -> dict:
    mine = (os.path.realpath(toolchain.FIRMWARE_DIR), os.path.realpath(toolchain.DRIVERS_DIR))
    return {t: v for t, v in frozen.items() if os.path.dirname(v[0]) in mine}


@pytest.fixture
def product(tmp_path) -> dict:
    """What the product manifest, boards/manifest.py, freezes by itself."""
    return Manifest(tmp_path, "esp32").frozen(BOARDS / "manifest.py")


def test_the_product_manifest_freezes_the_firmware_but_boot_and_main(product):
    want = {src.name for src in firmware_build.sources()} - {"boot.py", "main.py"}
    assert set(product) == want
    assert {opt for _, opt in product.values()} == {1}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_the_board_manifest_freezes_the_port_modules_and_the_firmware(folder, tmp_path, product):
    m = Manifest(tmp_path, "esp32", folder)
    frozen = m.frozen(folder / "manifest.py")
    # the firmware, exactly as the product manifest freezes it
    assert firmware_frozen(frozen) == product
    # the ESP32 port's own: its modules (_boot.py mounts the filesystem), asyncio, and the
    # micropython-lib packages it requires, among them onewire, which drivers/ds18b20.py uses
    port = MPY_DIR / "ports" / "esp32"
    assert {"_boot.py", "flashbdev.py", "inisetup.py", "asyncio/__init__.py"} <= set(frozen)
    assert frozen["_boot.py"][0] == os.path.realpath(port / "modules" / "_boot.py")
    declared = re.findall(r'^require\("([^"]+)"\)', (port / "boards" / "manifest.py").read_text(),
                          re.M)
    assert "onewire" in declared and m.required == declared


def test_the_unix_test_build_freezes_the_same_firmware(tmp_path, product):
    unix = Manifest(tmp_path, "unix").frozen(toolchain.HERE / "unix_manifest.py")
    assert firmware_frozen(unix) == product


def test_the_manifest_check_is_not_vacuous(tmp_path):
    broken = tmp_path / "manifest.py"
    broken.write_text('include("$(PORT_DIR)/boards/manifest.py")\n')
    frozen = Manifest(tmp_path, "esp32", tmp_path).frozen(broken)
    assert firmware_frozen(frozen) == {}
    with pytest.raises(manifestfile.ManifestFileError, match="Package 'nothing' not found"):
        m = Manifest(tmp_path, "esp32", tmp_path)
        m.lib.mkdir()  # micropython-lib there, yet without the package: an error as in a build
        broken.write_text('require("nothing")\n')
        m.frozen(broken)


# ------------------------------------------------------------------------------ partitions
# ESP-IDF's rules (v5.2.2: gen_esp32part.py, partition-tables.rst, ota.rst), written out here.
TABLE_OFFSET = 0x8000  # CONFIG_PARTITION_TABLE_OFFSET default; the table takes one 4 KB sector
SECTOR = 0x1000  # every offset is a multiple of the flash sector
APP_ALIGN = 0x10000  # app partitions start on a 64 KB boundary
OTADATA_SIZE = 0x2000  # two sectors, written alternately
NAME_MAX = 15  # 16 bytes with the terminating NUL
PORT_OTA_SLOT = 0x180000  # ports/esp32/partitions-4MiB-ota.csv: what the port's OTA variant fits


def parse_csv(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, ptype, subtype, offset, size, *flags = [f.strip() for f in line.split(",")]
            assert offset and size, f"{path.name}: {name} gives no offset or size"
            rows.append({"name": name, "type": ptype, "subtype": subtype,
                         "offset": int(offset, 0), "size": int(size, 0)})
    return rows


def flash_size(folder: Path) -> int:
    [mb] = re.findall(r"^CONFIG_ESPTOOLPY_FLASHSIZE_(\d+)MB=y$",
                      (folder / "sdkconfig.board").read_text(), re.M)
    return int(mb) * 1024 * 1024


def check_table(rows: list[dict], flash: int) -> None:
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), "names must be unique"
    assert all(0 < len(n) <= NAME_MAX for n in names), names
    assert all(r["type"] in ("app", "data") for r in rows)
    end = TABLE_OFFSET + SECTOR
    for r in sorted(rows, key=lambda r: r["offset"]):
        assert r["offset"] >= end, f"{r['name']} overlaps what comes before it"
        assert r["offset"] % (APP_ALIGN if r["type"] == "app" else SECTOR) == 0, r["name"]
        assert r["size"] > 0 and r["size"] % SECTOR == 0, r["name"]
        end = r["offset"] + r["size"]
    assert end <= flash, f"the table ends at {end:#x}, past the {flash:#x} bytes of flash"
    apps = [r for r in rows if r["type"] == "app"]
    assert sorted(r["subtype"] for r in apps) == ["ota_0", "ota_1"], "two OTA slots, no factory"
    assert len({r["size"] for r in apps}) == 1, "the slots take the same app"
    [otadata] = [r for r in rows if (r["type"], r["subtype"]) == ("data", "ota")]
    assert otadata["size"] == OTADATA_SIZE
    for name, subtype in (("nvs", "nvs"), ("phy_init", "phy")):
        assert any((r["name"], r["type"], r["subtype"]) == (name, "data", subtype) for r in rows)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_partition_table_keeps_esp_idf_rules_with_two_ota_slots(folder):
    rows = parse_csv(folder / "partitions.csv")
    check_table(rows, flash_size(folder))
    # an app slot is never smaller than the port's own OTA slot, which its OTA build fits
    assert min(r["size"] for r in rows if r["type"] == "app") >= PORT_OTA_SLOT
    # the filesystem: the partition the port mounts at / (flashbdev.py finds it by its label),
    # room for the default queue (64 KB), the 100 KB docs/node-runtime.md keeps free for the
    # node's files, and a queue a few times larger
    assert 'label="vfs"' in (MPY_DIR / "ports" / "esp32" / "modules" / "flashbdev.py").read_text()
    [vfs] = [r for r in rows if r["name"] == "vfs"]
    assert vfs["type"] == "data" and vfs["size"] >= 0x40000
    # and image.py reads the same slots (what `make image` reports the headroom against)
    assert [(p.name, p.size) for p in image.app_slots(folder / "partitions.csv")] == \
        [(r["name"], r["size"]) for r in rows if r["type"] == "app"]


OTA_1 = "ota_1,    app,  ota_1,   0x1d0000, 0x1c0000,"
VFS = "vfs,      data, fat,     0x390000, 0x70000,"


@pytest.mark.parametrize("good, bad, why", [
    (OTA_1, "ota_1,    app,  ota_1,   0x1d8000, 0x1c0000,", "ota_1"),  # not on 64 KB
    (OTA_1, "ota_1,    app,  ota_1,   0x1c0000, 0x1c0000,", "ota_1 overlaps"),
    (OTA_1, "ota_1,    app,  factory, 0x1d0000, 0x1c0000,", "two OTA slots"),
    (OTA_1, "ota_1,    app,  ota_1,   0x1d0000, 0x1b0000,", "same app"),
    (VFS, "vfs,      data, fat,     0x390000, 0x80000,", "past the"),  # beyond 4 MB
    (VFS, "vfs,      data, fat,     0x390800, 0x6f000,", "vfs"),  # not on a sector
    (VFS, "ota_0,    data, fat,     0x390000, 0x70000,", "unique"),
    ("otadata,  data, ota,     0xd000,   0x2000,", "otadata,  data, ota,     0xd000,   0x1000,",
     "assert 4096 == 8192"),
])
def test_the_partition_rules_are_not_vacuous(good, bad, why, tmp_path):
    table = (BOARDS / "idf" / "METERLINK_ESP32" / "partitions.csv").read_text()
    assert good in table
    path = tmp_path / "partitions.csv"
    path.write_text(table.replace(good, bad))
    with pytest.raises(AssertionError, match=why):
        check_table(parse_csv(path), 4 * 1024 * 1024)
