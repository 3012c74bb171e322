"""Analog inputs on the ESP32's ADC1: supply/battery voltage through a divider, and 0.5-4.5 V
pressure transducers with a two-point calibration, as scaled integers (mV, hPa).

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
    return RssiSensor(spec, hw)
