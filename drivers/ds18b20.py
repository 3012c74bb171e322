"""Maxim DS18B20 temperature probes on a 1-Wire bus, as scaled integers (0.01 degC).

    import onewire
    from ds18b20 import DS18B20
    bus = DS18B20(onewire.OneWire(machine.Pin(4)))
    roms = bus.search()                       # every DS18B20 on the line, sorted
    await asyncio.sleep_ms(bus.start(roms[0]))  # at most 750 ms at 12 bits (or poll done())
    temp_cC = bus.read(roms[0])               # 2153

Hand-written rather than micropython-lib's ds18x20: integers instead of floats, a CRC check on
every ROM and scratchpad, the 85 degC power-on value refused, start/read split per probe (each
probe's failure is its own), and a ROM search that reports what it found even when the line
is noisy.

ROM search: Maxim application note 187 ("1-Wire Search Algorithm"): per bit the parts send their
bit and its complement on the wired-AND line; 0/1 means all agree, 0/0 a conflict (take the
branch not yet explored, remember the last such bit), 1/1 nobody answered (the search stops
with what it has). Each ROM found must pass the Maxim CRC-8 (polynomial X^8+X^5+X^4+1, 0x8C
reflected) over its first 7 bytes; only family 0x28 (DS18B20) is kept.

Reading (datasheet 19-7487): MATCH ROM, READ SCRATCHPAD, 9 bytes whose 9th is the CRC-8 of the
first 8. Temperature is a signed 16-bit count of 1/16 degC; converted to 0.01 degC rounded to
nearest, halves away from zero (-10.125 -> -1013). The scratchpad reads +85 degC (0x0550) at
power-on until a conversion completes, so that exact value is refused as "not converted" (a
probe that lost its supply, typically in parasite mode): a real 85.00 degC reading is lost,
which no water or air probe will see.

Conversion time: 750 ms at most at 12 bits. A probe with its own supply answers read slots
after CONVERT T with 0 while converting and 1 when done (datasheet, "CONVERT T [44h]"), so the
node polls every 20 ms and reads as soon as the probe is done, never later than 750 ms. Those
read slots answer only until the next reset: when another probe's command went out on the bus
meanwhile, the node waits the full 750 ms instead.
"""

from time import ticks_diff, ticks_ms

from micropython import const

_SEARCH_ROM = const(0xF0)
_MATCH_ROM = const(0x55)
_CONVERT_T = const(0x44)
_READ_SCRATCH = const(0xBE)
_FAMILY = const(0x28)
_MAX_PASSES = const(32)  # ROM search passes: one per part found, more than a node carries
_POWER_ON = const(0x0550)
_CONVERT_MS = const(750)
_POLL_MS = const(20)


def crc8(data, n=None):
    c = 0
    for i in range(len(data) if n is None else n):
        b = data[i]
        for _ in range(8):
            mix = (c ^ b) & 1
            c >>= 1
            if mix:
                c ^= 0x8C
            b >>= 1
    return c


def rom_hex(rom):
    return "".join("%02x" % b for b in rom)


class DS18B20:
    def __init__(self, ow, name="onewire"):
        self._ow = ow
        self._name = name
        self._sp = bytearray(9)
        self.resets = 0  # reset pulses sent: a conversion's read slots end at the next one

    def search(self):
        """ROMs of every DS18B20 on the bus, sorted; raises OSError when no part answers the
        reset (nothing connected, or the line is shorted)."""
        ow = self._ow
        found = []
        rom = bytearray(8)
        last_conflict = -1
        passes = 0
        while True:
            passes += 1
            if passes > _MAX_PASSES:  # one pass per part: a line stuck low flips forever
                raise OSError("%s: the ROM search does not end: the line is stuck low or "
                              "noisy" % self._name)
            if not ow.reset():
                if found:
                    break
                raise OSError("%s: no presence pulse: no probe connected, or the line is "
                              "shorted or missing its 4.7 kohm pull-up" % self._name)
            ow.writebyte(_SEARCH_ROM)
            conflict = -1
            for i in range(64):
                b, nb = ow.readbit(), ow.readbit()
                if b and nb:
                    rom = None  # nobody answered: the line changed under the search
                    break
                if not b and not nb:  # parts disagree here
                    if i < last_conflict:
                        b = (rom[i >> 3] >> (i & 7)) & 1
                    else:
                        b = 1 if i == last_conflict else 0
                    if not b:
                        conflict = i
                ow.writebit(b)
                if b:
                    rom[i >> 3] |= 1 << (i & 7)
                else:
                    rom[i >> 3] &= ~(1 << (i & 7))
            if rom is None:
                break
            if crc8(rom, 7) == rom[7] and rom[0] == _FAMILY:
                found.append(bytes(rom))
            last_conflict = conflict
            if conflict < 0:
                break
        found.sort()
        return found

    def _select(self, rom):
        ow = self._ow
        self.resets += 1
        if not ow.reset():
            raise OSError("%s: no presence pulse" % self._name)
        ow.writebyte(_MATCH_ROM)
        ow.write(rom)

    def start(self, rom):
        """Starts a conversion on one probe; returns the most ms it takes (750 at 12 bits):
        read() after that long, or as soon as done(mark) says so, `mark` being `resets` read
        right after this call."""
        self._select(rom)
        self._ow.writebyte(_CONVERT_T)
        return _CONVERT_MS

    def done(self, mark):
        """True when the conversion started at `mark` has finished, by the probe's read slot;
        False while it converts, and whenever the bus was reset since (the read slots no
        longer answer for that conversion: wait the full time)."""
        return mark == self.resets and self._ow.readbit() == 1

    def read(self, rom):
        ow = self._ow
        self._select(rom)
        ow.writebyte(_READ_SCRATCH)
        sp = self._sp
        ow.readinto(sp)
        name = "%s:%s" % (self._name, rom_hex(rom))
        if sp[0] == 0xFF and sp[1] == 0xFF and sp[8] == 0xFF:
            raise OSError("%s: probe not answering" % name)
        c = crc8(sp, 8)
        if c != sp[8]:
            raise OSError("%s: scratchpad CRC error: got 0x%02x, expected 0x%02x"
                          % (name, sp[8], c))
        raw = sp[0] | (sp[1] << 8)
        if raw == _POWER_ON:
            raise OSError("%s: power-on value 85 C: the conversion did not run (supply lost?)"
                          % name)
        if raw & 0x8000:  # 1/16 degC -> 0.01 degC, rounded half away from zero
            return -(((0x10000 - raw) * 100 + 8) // 16)
        return (raw * 100 + 8) // 16


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py (the entry is checked by cfg_gpio.py).
# One adapter per probe, so each
# probe's failure is its own channel's error; the probes of one bus share the OneWire object
# (kept by sensors.Hardware), and each searches the bus when it is (re)created.


def create(spec, hw):
    return DS18B20Sensor(spec, hw)


class DS18B20Sensor:
    def __init__(self, spec, hw):
        import asyncio

        import channels

        self._sleep_ms = asyncio.sleep_ms
        self.interval_s = spec["interval_s"]
        self.dev = hw.onewire(spec["pin"], DS18B20)
        roms = self.dev.search()
        if spec["rom"] is not None:
            self.rom = bytes.fromhex(spec["rom"])
            if self.rom not in roms:
                raise OSError("ds18b20@ow%d: probe %s not found (found: %s)"
                              % (spec["pin"], spec["rom"], ", ".join(rom_hex(r) for r in roms)
                                 or "none"))
        else:
            if spec["index"] >= len(roms):
                raise OSError("ds18b20@ow%d: probe %d wanted, %d found"
                              % (spec["pin"], spec["index"], len(roms)))
            self.rom = roms[spec["index"]]
        self.label = "ds18b20@ow%d:%s" % (spec["pin"], spec["rom"] or "#%d" % spec["index"])
        self.key = channels.key(channels.TEMPERATURE, spec["instance"])

    async def sample(self):
        dev = self.dev
        most = dev.start(self.rom)
        mark = dev.resets
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < most:
            await self._sleep_ms(_POLL_MS)
            if dev.done(mark):
                break
        return {self.key: dev.read(self.rom)}
