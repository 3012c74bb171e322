# meterlink node on an ESP32-S3-DevKitC-1 (ESP32-S3-WROOM-1, 8 MB flash):
# boards/esp32s3-devkitc.json. Modelled on the port's ESP32_GENERIC_S3 (native USB REPL,
# PSRAM used when the module has it); no Bluetooth (mpconfigboard.h).
set(IDF_TARGET esp32s3)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.usb
    boards/sdkconfig.spiram_sx
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

include(${MICROPY_BOARD_DIR}/../meterlink_board.cmake)
