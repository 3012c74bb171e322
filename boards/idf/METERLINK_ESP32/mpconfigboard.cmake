# meterlink node on an ESP32-DevKitC (ESP32-WROOM-32, 4 MB flash): boards/esp32-devkitc.json.
# Modelled on the port's ESP32_GENERIC with its OTA variant; no Bluetooth (mpconfigboard.h).
set(IDF_TARGET esp32)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

include(${MICROPY_BOARD_DIR}/../meterlink_board.cmake)
