# Frozen modules of the unix-port build that tests, the demo and the virtual boards run: the
# meterlink image. It freezes the firmware with the same manifest the ESP32 image uses
# (boards/manifest.py, `make image`), so what the tests measure is what a device runs: the
# firmware's bytecode outside the heap, only its live objects in it.
include("unix_manifest_stock.py")
include("../../boards/manifest.py")
