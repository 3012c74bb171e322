// _vboard: the one thing the virtual board needs from C. A reset or a deep sleep ends
// everything on a device at once: no `finally` block, no `except` clause and no asyncio task
// runs after it. The virtual board models that by ending the process with the exit status its
// launcher reads (3 reset, 4 deep sleep, see host_tools/vboard/mpy/machine.py). sys.exit()
// would raise SystemExit through the firmware's own code instead, and the unix port's FFI
// module, which could call libc's _exit(), is not in our 32-bit build (it needs a 32-bit
// libffi).
#include <unistd.h>

#include "py/runtime.h"

static mp_obj_t vboard_hard_exit(mp_obj_t status) {
    _exit(mp_obj_get_int(status));
    return mp_const_none;  // not reached
}
static MP_DEFINE_CONST_FUN_OBJ_1(vboard_hard_exit_obj, vboard_hard_exit);

static const mp_rom_map_elem_t vboard_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__vboard) },
    { MP_ROM_QSTR(MP_QSTR_hard_exit), MP_ROM_PTR(&vboard_hard_exit_obj) },
};
static MP_DEFINE_CONST_DICT(vboard_module_globals, vboard_module_globals_table);

const mp_obj_module_t vboard_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&vboard_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR__vboard, vboard_user_cmodule);
