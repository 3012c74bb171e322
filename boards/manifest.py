# The meterlink firmware frozen into a MicroPython image: every module of firmware/ and
# drivers/ except boot.py and main.py. Frozen bytecode runs from flash, so a node's heap holds
# only live objects, never the code (docs/node-memory.md).
#
# Included by the ESP32 board definitions (boards/idf/*/manifest.py, `make image`) and by the
# unix-port build the tests run (host_tools/toolchain/unix_manifest.py): what the tests
# measure is what a device runs.
#
# boot.py and main.py stay files on the node's filesystem (`meterlink deploy` writes them):
# MicroPython runs a frozen boot.py / main.py in preference to the files, which would leave a
# technician no way to stop or replace them.
#
# -O1 as for the .mpy form (host_tools/firmware_build.py): asserts and __debug__ blocks are
# compiled out. Paths are relative to this file (the manifest tool runs it from its folder).
import os

STAYS_A_FILE = ("boot.py", "main.py")

for _folder in ("../firmware", "../drivers"):
    for _name in sorted(os.listdir(_folder)):
        if _name.endswith(".py") and _name not in STAYS_A_FILE:
            module(_name, base_path=_folder, opt=1)
