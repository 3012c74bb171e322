"""CPython stand-in for MicroPython's `micropython` module, for the fuzzer only (see
tests/fuzz/node_shim.py): `const()` is the identity, as it is at run time on a device."""


def const(value):
    return value
