# What every meterlink board definition for MicroPython's ESP32 port shares; the last line of
# boards/idf/*/mpconfigboard.cmake includes it. `make image` builds with these
# (host_tools/image.py, docs/board-bringup.md "Building the node image").

# The partition table beside the board definition (two OTA app slots). ESP-IDF resolves
# CONFIG_PARTITION_TABLE_CUSTOM_FILENAME relative to its project folder, which for MicroPython
# is ports/esp32 (where the port's own boards find their CSVs by name), unless the path is
# absolute. An out-of-tree board therefore names its CSV by absolute path, in an sdkconfig
# fragment written into the build folder and read after the board's other fragments: the
# port's CMakeLists.txt concatenates SDKCONFIG_DEFAULTS in order, and of two values for one
# option the later wins (boards/sdkconfig.base names partitions-4MiB.csv).
get_filename_component(METERLINK_BOARD_DIR "${MICROPY_BOARD_DIR}" ABSOLUTE)
set(METERLINK_PARTITIONS_FRAGMENT ${CMAKE_BINARY_DIR}/sdkconfig.meterlink_partitions)
file(WRITE ${METERLINK_PARTITIONS_FRAGMENT}
    "CONFIG_PARTITION_TABLE_CUSTOM=y\n"
    "CONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${METERLINK_BOARD_DIR}/partitions.csv\"\n")
list(APPEND SDKCONFIG_DEFAULTS ${METERLINK_PARTITIONS_FRAGMENT})

# Frozen modules: the board's manifest.py, which includes the port's own manifest and the
# firmware's (boards/manifest.py).
set(MICROPY_FROZEN_MANIFEST ${METERLINK_BOARD_DIR}/manifest.py)

# The image's version, the one its app description (esp_app_desc_t) carries and `meterlink
# gateway ota` reads to tell an image update's version: the firmware's FIRMWARE_VERSION
# (firmware/node.py). ESP-IDF takes PROJECT_VER when it is set before project(), which the
# port's CMakeLists.txt calls after including this file.
file(STRINGS ${METERLINK_BOARD_DIR}/../../../firmware/node.py METERLINK_VERSION_LINE
     REGEX "^FIRMWARE_VERSION = ")
string(REGEX REPLACE "^FIRMWARE_VERSION = \"([^\"]+)\".*" "\\1" PROJECT_VER
       "${METERLINK_VERSION_LINE}")
