"""CPython stand-in for the virtual board's `esp32` module, for the fuzzer only (see
tests/fuzz/node_shim.py): the partition table of a stock MicroPython image, a single `factory`
app partition, as the MicroPython replay sees it (no virtual board configured): there is no
partition to update (OSError ENOENT), and the running one holds no app description."""


class Partition:
    RUNNING = 1
    BOOT = 0

    def __init__(self, label):
        self.label = label

    def info(self):
        return (0, 0, 0x10000, 0x1F0000, "factory", False)

    def get_next_update(self):
        raise OSError(2)

    def readblocks(self, block, buf, offset=0):
        for i in range(len(buf)):
            buf[i] = 0xFF
