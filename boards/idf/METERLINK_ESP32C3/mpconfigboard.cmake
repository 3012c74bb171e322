# meterlink node on an ESP32-C3-DevKitM-1 (ESP32-C3-MINI-1, 4 MB flash):
# boards/esp32c3-devkitm.json. Modelled on the port's ESP32_GENERIC_C3; no Bluetooth and no
# USB Serial/JTAG console (mpconfigboard.h).
set(IDF_TARGET esp32c3)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

include(${MICROPY_BOARD_DIR}/../meterlink_board.cmake)
