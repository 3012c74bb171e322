// meterlink node on an ESP32-C3-DevKitM-1 (boards/esp32c3-devkitm.json).
//
// sys.implementation._machine reads "meterlink ESP32-C3-DevKitM-1 with ESP32C3": `meterlink`
// tools take the chip from its last word, so MICROPY_HW_MCU_NAME is the port's own name for it.
#define MICROPY_HW_BOARD_NAME               "meterlink ESP32-C3-DevKitM-1"
#define MICROPY_HW_MCU_NAME                 "ESP32C3"

// The REPL on UART0, which this board wires to its USB-UART bridge (its only USB socket).
#define MICROPY_HW_ENABLE_UART_REPL         (1)

// No USB Serial/JTAG console. The board file gives GPIO18/19 (the chip's USB pins, not
// connected to USB on this board) to UART1 for Modbus/M-Bus. With the console on, as in the
// port's ESP32_GENERIC_C3, MicroPython withholds Pin(18) and Pin(19) ("invalid pin"); without
// it they are ordinary GPIOs (machine_pin.h), and ESP-IDF's uart_set_pin() detaches them from
// the USB PHY when UART1 takes them.
#define MICROPY_HW_ESP_USB_SERIAL_JTAG      (0)

// No Bluetooth: the firmware does not use it, and without it (and without
// boards/sdkconfig.ble) the app, which has to fit an OTA slot, is smaller.
#define MICROPY_PY_BLUETOOTH                (0)
