// meterlink node on an ESP32-DevKitC (boards/esp32-devkitc.json).
//
// sys.implementation._machine reads "meterlink ESP32-DevKitC with ESP32": `meterlink` tools
// take the chip from its last word, so MICROPY_HW_MCU_NAME is the port's own name for it.
#define MICROPY_HW_BOARD_NAME               "meterlink ESP32-DevKitC"
#define MICROPY_HW_MCU_NAME                 "ESP32"

// No Bluetooth: the firmware does not use it. Without it (and without boards/sdkconfig.ble)
// the app is smaller, and it has to fit an OTA slot twice over; on the ESP32 the DRAM that
// ESP-IDF reserves for the Bluetooth controller (CONFIG_BTDM_RESERVE_DRAM, 0xdb5c bytes) also
// stays free for the heap. As the port's ESP32_GENERIC_S2 board does.
#define MICROPY_PY_BLUETOOTH                (0)
