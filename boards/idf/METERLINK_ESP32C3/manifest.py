# Frozen into the meterlink image: first what MicroPython's ESP32 port freezes into its own
# images (asyncio, onewire and the other micropython-lib packages it requires, _boot.py and the
# filesystem setup), which the firmware relies on as on a stock image; then the firmware
# itself, by the manifest the unix-port test build freezes too (boards/manifest.py).
include("$(PORT_DIR)/boards/manifest.py")
include("../../manifest.py")
