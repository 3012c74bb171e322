// meterlink node on an ESP32-S3-DevKitC-1 (boards/esp32s3-devkitc.json).
//
// sys.implementation._machine reads "meterlink ESP32-S3-DevKitC-1 with ESP32S3": `meterlink`
// tools take the chip from its last word, so MICROPY_HW_MCU_NAME is the port's own name for it.
#define MICROPY_HW_BOARD_NAME               "meterlink ESP32-S3-DevKitC-1"
#define MICROPY_HW_MCU_NAME                 "ESP32S3"

// The REPL on the board's USB-UART bridge as well as on native USB, as ESP32_GENERIC_S3.
#define MICROPY_HW_ENABLE_UART_REPL         (1)

// Default I2C pins, those of the board file's bus 0.
#define MICROPY_HW_I2C0_SCL                 (9)
#define MICROPY_HW_I2C0_SDA                 (8)

// No Bluetooth: the firmware does not use it, and without it (and without
// boards/sdkconfig.ble) the app, which has to fit an OTA slot, is smaller.
#define MICROPY_PY_BLUETOOTH                (0)
