"""Analog inputs on the ESP32's ADC1: supply/battery voltage through a divider, 0.5-4.5 V
pressure transducers with a two-point calibration, and 4-20 mA current loops through a shunt,
as scaled integers (mV, hPa, uA and the loop's channel unit).

    from analog import Battery, Pressure
    bat = Battery(35, r_top=100000, r_bottom=100000)      # 1:1 divider
    bat.read_mv()                                           # 3987
    p = Pressure(34, cal=((500, 0), (4500, 10000)), r_top=10000, r_bottom=10000)
    p.read_hpa()                                            # 0-10 bar transducer: 4321 hPa

The ESP32 ADC is noisy (several mV), so each reading averages `samples` (default 16) calibrated
read_uv() values (ESP-IDF's eFuse calibration, applied by the port): about 1 ms, short enough
not to need an await. Integers throughout: the pin voltage in uV is summed, the divider is
undone as mV * (r_top + r_bottom) // r_bottom, the calibration line is evaluated with rounding.

A transducer with a live zero (0.5 V at the bottom of its range) tells a cut wire or a missing
supply (near 0 V) and a short to the supply (above its 4.5 V top) from a real reading: a
voltage more than 5 % of the span outside the calibration points raises OSError naming the
voltage and the likely cause, never a value. A battery input reading under 100 mV at the pin
is a broken divider or a missing battery, also an error.

A 4-20 mA current loop (a station's level or pressure transmitter) returns through a shunt
resistor from the pin to GND: the pin reads current x shunt (100 ohm: 0.4-2.0 V; the config
check keeps 21 mA inside the ADC's 11 dB range, so a short reads as one). A divider after the
shunt is a load in parallel with it, and counted: loop uA = pin uV * (shunt + r_top +
r_bottom) // (shunt * r_bottom). The channel value is the line through `rng` (the values at 4
and at 20 mA), rounded like the pressure line.

    loop = CurrentLoop(34, shunt_ohm=100, rng=(0, 5000))  # 0-5 m level transmitter, mm
    loop.read_ua()                                         # 12000
    loop.read()                                            # 2500

Faults as NAMUR NE 43 defines them: at or below 3.6 mA the loop is open (broken wire,
transmitter unpowered, or the transmitter reporting its own failure low), at or above 21 mA
it is over range or shorted: OSError naming the current and the cause. Every current between
is reported as measured, the saturation bands 3.6-3.8 and 20.5-21 mA included, not clamped to
the range: a clamp is one-sided, so the ADC noise around an empty tank's 4 mA would average
above 0 mm, and a transmitter's zero drift would be hidden. The transmitter's own saturation
(3.8 / 20.5 mA) keeps the value within 1.25 % below and 3.1 % above the range, and a value
outside the range tells the platform the process is outside the transmitter's.
"""

from micropython import const

_ATTN_11DB = const(3)


class _Input:
    def __init__(self, pin, r_top, r_bottom, samples, what):
        import machine

        if r_bottom <= 0 or r_top < 0:
            raise ValueError("divider resistances must be positive")
        self._what = what
        try:
            self._adc = machine.ADC(machine.Pin(pin), atten=_ATTN_11DB)
        except ValueError:
            raise ValueError("%s: GPIO %d is not an ADC1 input" % (what, pin))
        self._num = r_top + r_bottom
        self._den = r_bottom
        self._n = samples

    def pin_uv(self):
        total = 0
        for _ in range(self._n):
            total += self._adc.read_uv()
        return total // self._n

    def source_mv(self):
        """The voltage at the divider's input, mV (rounded)."""
        return (self.pin_uv() * self._num + 500 * self._den) // (1000 * self._den)


class Battery(_Input):
    def __init__(self, pin, *, r_top=100000, r_bottom=100000, samples=16):
        super().__init__(pin, r_top, r_bottom, samples, "battery@adc%d" % pin)

    def read_mv(self):
        uv = self.pin_uv()
        if uv < 100000:
            raise OSError("%s: %d mV at the pin: divider open or no battery"
                          % (self._what, uv // 1000))
        return (uv * self._num + 500 * self._den) // (1000 * self._den)


class Pressure(_Input):
    def __init__(self, pin, *, cal, r_top=10000, r_bottom=10000, samples=16):
        super().__init__(pin, r_top, r_bottom, samples, "pressure@adc%d" % pin)
        (self._v1, self._p1), (self._v2, self._p2) = cal
        if self._v2 == self._v1:
            raise ValueError("%s: the calibration points need two different voltages"
                             % self._what)
        span = abs(self._v2 - self._v1)
        self._lo = min(self._v1, self._v2) - span // 20
        self._hi = max(self._v1, self._v2) + span // 20

    def read_hpa(self):
        v = self.source_mv()
        if v < self._lo:
            raise OSError("%s: %d mV, below the transducer's live zero: wire cut or sensor "
                          "unpowered" % (self._what, v))
        if v > self._hi:
            raise OSError("%s: %d mV, above the transducer's range: short to the supply"
                          % (self._what, v))
        num = (v - self._v1) * (self._p2 - self._p1)
        den = self._v2 - self._v1
        if den < 0:
            num, den = -num, -den
        return self._p1 + (2 * num + den) // (2 * den)  # rounded to the nearest hPa


class CurrentLoop(_Input):
    def __init__(self, pin, *, shunt_ohm, rng, divider=None, samples=16):
        rt, rb = divider or (0, 1)
        super().__init__(pin, rt, rb, samples, "current_loop@adc%d" % pin)
        # loop uA = pin uV * num // den (the module docstring)
        self._num, self._den = (shunt_ohm + rt + rb, shunt_ohm * rb) if divider else (1, shunt_ohm)
        self._v4, self._v20 = rng

    def read_ua(self):
        """The loop current, uA; OSError on an NE 43 failure current."""
        ua = (self.pin_uv() * self._num + self._den // 2) // self._den
        if ua <= 3600:
            why = "at or below 3.6 mA: open loop, broken wire or transmitter unpowered"
        elif ua >= 21000:
            why = "at or above 21 mA: over range or short circuit"
        else:
            return ua
        raise OSError("%s: %d.%02d mA, %s" % (self._what, ua // 1000, ua % 1000 // 10, why))

    def read(self):
        """The channel value at the loop current (the range's unit), rounded."""
        num = (self.read_ua() - 4000) * (self._v20 - self._v4)
        return self._v4 + (num + 8000) // 16000


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py; they live in the driver module because
# every extra module costs about 1.5 KB of heap on the node. The config entry is checked by a
# drivers/cfg_*.py module, dropped from memory once the config is validated.


class BatterySensor:
    def __init__(self, spec, hw):
        import channels

        self.label = "battery@adc%d" % spec["pin"]
        self.interval_s = spec["interval_s"]
        self.dev = Battery(spec["pin"], r_top=spec["divider"][0],
                                  r_bottom=spec["divider"][1], samples=spec["samples"])
        self.key = channels.key(channels.BATTERY_VOLTAGE, spec["instance"])

    async def sample(self):
        return {self.key: self.dev.read_mv()}


class PressureSensor:
    def __init__(self, spec, hw):
        import channels

        self.label = "pressure@adc%d" % spec["pin"]
        self.interval_s = spec["interval_s"]
        self.dev = Pressure(spec["pin"], cal=spec["cal"], r_top=spec["divider"][0],
                                   r_bottom=spec["divider"][1], samples=spec["samples"])
        self.key = channels.key(channels.WATER_PRESSURE, spec["instance"])

    async def sample(self):
        return {self.key: self.dev.read_hpa()}


class CurrentLoopSensor:
    def __init__(self, spec, hw):
        import channels

        self.label = "current_loop@adc%d" % spec["pin"]
        self.interval_s = spec["interval_s"]
        self.dev = CurrentLoop(spec["pin"], shunt_ohm=spec["shunt_ohm"], rng=spec["range"],
                               divider=spec["divider"], samples=spec["samples"])
        self.key = channels.key(spec["id"], spec["instance"])

    async def sample(self):
        return {self.key: self.dev.read()}


class RssiSensor:
    def __init__(self, spec, hw):
        import channels

        self.label = "rssi@wlan"
        self.interval_s = spec["interval_s"]
        self.key = channels.key(channels.RSSI, spec["instance"])

    async def sample(self):
        import network

        wlan = network.WLAN(network.STA_IF)
        if not wlan.isconnected():
            raise OSError("rssi@wlan: Wi-Fi not connected")
        return {self.key: wlan.status("rssi")}


def create(spec, hw):
    if spec["driver"] == "battery":
        return BatterySensor(spec, hw)
    if spec["driver"] == "pressure":
        return PressureSensor(spec, hw)
    if spec["driver"] == "current_loop":
        return CurrentLoopSensor(spec, hw)
    return RssiSensor(spec, hw)
