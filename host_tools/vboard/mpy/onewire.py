"""`onewire` of the MicroPython ESP32 port (1.25) for the virtual board: the OneWire class over
the bus model in hw/onewire.py (on the device, Python over the C `_onewire` bit primitives)."""

# OneWire(pin): reset(required=False) -> presence (OneWireError when required and absent),
# readbit(), readbyte(), readinto(buf), writebit(v), writebyte(v), write(buf), select_rom(rom),
# scan() (ROM search), crc8(data) (Maxim, polynomial 0x31 reflected).

import hw.onewire as _bus


class OneWireError(Exception):
    pass


class OneWire:
    SEARCH_ROM = 0xF0
    MATCH_ROM = 0x55
    SKIP_ROM = 0xCC

    def __init__(self, pin):
        import machine

        self.pin = machine.Pin(pin)
        self._bus = _bus.bus(self.pin._id)

    def reset(self, required=False):
        present = self._bus.reset()
        if required and not present:
            raise OneWireError
        return present

    def readbit(self):
        return self._bus.readbit()

    def readbyte(self):
        v = 0
        for i in range(8):
            v |= self._bus.readbit() << i
        return v

    def readinto(self, buf):
        for i in range(len(buf)):
            buf[i] = self.readbyte()

    def writebit(self, value):
        self._bus.writebit(value & 1)

    def writebyte(self, value):
        for i in range(8):
            self._bus.writebit((value >> i) & 1)

    def write(self, buf):
        for b in buf:
            self.writebyte(b)

    def select_rom(self, rom):
        self.reset()
        self.writebyte(self.MATCH_ROM)
        self.write(rom)

    def crc8(self, data):
        return _bus.crc8(data)

    def scan(self):
        devices = []
        diff = 65
        rom = bytearray(8)
        for _ in range(0xFF):
            if not self.reset():
                return devices
            self.writebyte(self.SEARCH_ROM)
            next_diff = 0
            i = 64
            for byte in range(8):
                r_b = 0
                for bit in range(8):
                    b = self.readbit()
                    if self.readbit():
                        if b:  # no part answered
                            return devices
                    elif not b:  # a conflict
                        if diff > i or ((rom[byte] & (1 << bit)) and diff != i):
                            b = 1
                            next_diff = i
                    self.writebit(b)
                    if b:
                        r_b |= 1 << bit
                    i -= 1
                rom[byte] = r_b
            devices.append(bytes(rom))
            diff = next_diff
            if not diff:
                break
        return devices
