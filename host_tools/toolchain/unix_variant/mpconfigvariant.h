// The MicroPython unix port as the virtual board runs it: the port's standard variant with
// Ctrl-C handled as on an ESP32.
//
// The standard variant raises KeyboardInterrupt from inside the SIGINT handler
// (MICROPY_ASYNC_KBD_INTR), so it can land anywhere in C code: in the middle of a garbage
// collection it leaves the heap locked for good ("memory allocation failed, heap is locked"),
// and inside a mutex-holding call it deadlocks the process. On an ESP32 the UART's Ctrl-C only
// schedules the KeyboardInterrupt, which the VM raises between bytecodes; so here too.

#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)
#include "variants/mpconfigvariant_common.h"

#undef MICROPY_ASYNC_KBD_INTR
#define MICROPY_ASYNC_KBD_INTR (0)
