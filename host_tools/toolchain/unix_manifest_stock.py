# Frozen modules of the "stock" unix-port build: what a stock MicroPython image for the ESP32
# has that the firmware relies on, and the virtual board. The meterlink image build
# (unix_manifest.py) freezes this and the firmware.
#
# asyncio: the ESP32 port freezes it too. The Debian "+ds" source has no lib/micropython-lib,
# so only what extmod ships is frozen.
include("$(MPY_DIR)/extmod/asyncio")

# The virtual board (host_tools/vboard/mpy): on an ESP32, `machine`, `network` and `esp32` are
# C modules whose code takes no heap. Frozen here, the virtual board's bytecode lives outside
# the MicroPython heap as well, so `-X heapsize=96K` measures the firmware and nothing else.
# setup.sh rebuilds (a few seconds) whenever these files change. A new top-level module of
# the virtual board is added to the list below; everything under hw/ is frozen as it is.
# repl_agent.py runs the code of the pty board's REPL (host_tools/vboard/pty_repl.py); on a
# device the REPL is C code, so frozen it takes no heap either. onewire.py stands in for
# micropython-lib's `onewire`, which the ESP32 port's own manifest freezes.
for _name in ("machine.py", "network.py", "esp32.py", "repl_agent.py", "onewire.py"):
    module(_name, base_path="../vboard/mpy")
package("hw", base_path="../vboard/mpy")
