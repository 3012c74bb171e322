"""The virtual board: the real firmware on a PC.

`mpy/` holds MicroPython modules (`machine`, `network`, `esp32` and register-level hardware
models in `mpy/hw/`) that the MicroPython unix port imports in place of the ESP32 port's;
`node.py` is the CPython launcher that runs a node in its own folder.
"""

from host_tools.vboard.node import VirtualNode, default_board, default_config

__all__ = ["VirtualNode", "default_board", "default_config"]
