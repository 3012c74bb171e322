# Frozen modules for the unix-port build the tests and the demo run.
# The ESP32 port freezes asyncio too; the Debian "+ds" source has no lib/micropython-lib,
# so only what extmod ships is frozen here.
include("$(MPY_DIR)/extmod/asyncio")
