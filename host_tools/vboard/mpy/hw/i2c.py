"""machine.I2C and machine.SoftI2C of the virtual board (see `machine`): transfers go to the
device models of the board's bus; a NACK raises OSError(ENODEV) and a bus timeout
OSError(ETIMEDOUT), as the ESP32 port does."""

import hw
from hw.pin import Pin


def _pin_id(pin):
    return None if pin is None else Pin(pin)._id


class I2C:
    """Hardware I2C. The controller reaches the parts of the board's bus with the same id when
    the pins match board.json (or are left default); other pins reach an empty bus."""

    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        if not isinstance(id, int) or not 0 <= id < (
                1 if hw.board().chip in ("esp32c3", "esp32c6") else 2):
            raise ValueError("I2C(%s) doesn't exist" % (id,))
        self._id = id
        self._mem = bytearray(4)
        self.init(scl=scl, sda=sda, freq=freq, timeout=timeout)

    def init(self, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._scl, self._sda, self._freq = _pin_id(scl), _pin_id(sda), freq
        self._bus = hw.board().i2c_bus(self._id, self._scl, self._sda)

    def __repr__(self):
        b = self._bus
        return "I2C(%d, scl=%s, sda=%s, freq=%d)" % (
            self._id, self._scl if b.scl is None else b.scl,
            self._sda if b.sda is None else b.sda, self._freq)

    def deinit(self):
        pass

    def scan(self):
        found = []
        for addr in range(0x08, 0x78):
            try:
                self._bus.select(addr)
                found.append(addr)
            except OSError:
                pass
        return found

    def _memaddr(self, memaddr, addrsize):
        if addrsize & 7 or addrsize > 32:
            raise ValueError("invalid addrsize")
        n = addrsize >> 3
        for i in range(n):
            self._mem[i] = (memaddr >> (8 * (n - 1 - i))) & 0xFF
        return memoryview(self._mem)[:n]

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        dev = self._bus.select(addr)
        dev.i2c_write((self._memaddr(memaddr, addrsize),))
        dev.i2c_read(buf)

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf, addrsize=addrsize)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._bus.select(addr).i2c_write((self._memaddr(memaddr, addrsize), buf))

    def readfrom_into(self, addr, buf, stop=True):
        self._bus.select(addr).i2c_read(buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self._bus.select(addr).i2c_read(buf)
        return bytes(buf)

    def writeto(self, addr, buf, stop=True):
        self._bus.select(addr).i2c_write((buf,))
        return len(buf)  # the number of ACKed bytes, as the ESP32 port returns

    def writevto(self, addr, vector, stop=True):
        self._bus.select(addr).i2c_write(vector)
        return sum(len(b) for b in vector)

    def start(self, *args):
        raise OSError("I2C operation not supported")

    stop = readinto = write = start


class SoftI2C(I2C):
    """Bit-banged I2C: reaches the board's bus wired to these pins, whatever its id."""

    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        self._id = -1
        self._mem = bytearray(4)
        self.init(scl, sda, freq=freq)

    def init(self, scl, sda, *, freq=400000, timeout=50000):
        self._scl, self._sda, self._freq = _pin_id(scl), _pin_id(sda), freq
        self._bus = hw.board().soft_i2c_bus(self._scl, self._sda)

    def __repr__(self):
        return "SoftI2C(scl=%d, sda=%d, freq=%d)" % (self._scl, self._sda, self._freq)
