"""machine.ADC of the virtual board (ADC1 of ESP32 / ESP32-S3 / ESP32-C3), loaded on first use."""

# ADC(pin, *, atten=ATTN_0DB): only ADC1 pins (ADC2 cannot be read while Wi-Fi runs, so the
# firmware never uses it): ESP32 GPIO 32-39, ESP32-S3 GPIO 1-10, ESP32-C3 GPIO 0-4; other pins
# raise ValueError("invalid Pin for ADC"). read_uv() is the calibrated voltage, read_u16() and
# read() (12-bit) the raw code. Full scale per attenuation follows ESP-IDF's ADC docs
# (ESP32: 950 / 1250 / 1750 / 2450 mV; ESP32-S3: 950 / 1250 / 1750 / 3100 mV; ESP32-C3:
# 750 / 1050 / 1300 / 2500 mV): a higher input reads full scale.
#
# The voltage at each pin comes from env.json "adc_mv": {"35": 2050.0} (absent: 0 mV), plus
# repeatable noise of up to +-8 mV per read (the ESP32 ADC is noisy; drivers average).
# Faults: "adc<gpio>": "open" (the wire is cut: the pin reads about 0 V).

import hw

_PINS = {"esp32": (32, 33, 34, 35, 36, 37, 38, 39), "esp32s3": tuple(range(1, 11)),
         "esp32c3": (0, 1, 2, 3, 4)}
_FULL_MV = {"esp32": (950, 1250, 1750, 2450), "esp32s3": (950, 1250, 1750, 3100),
            "esp32c3": (750, 1050, 1300, 2500)}
_seed = [12345]


def _noise_mv():
    x = (_seed[0] * 1103515245 + 12345) & 0x7FFFFFFF
    _seed[0] = x
    return (x >> 16) % 17 - 8


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 12

    def __init__(self, pin, *, atten=0):
        import machine

        chip = hw.board().chip
        n = machine.Pin(pin)._id
        if n not in _PINS.get(chip, ()):
            raise ValueError("invalid Pin for ADC")
        self._gpio = n
        self._full = _FULL_MV[chip]
        self.atten(atten)

    def __repr__(self):
        return "ADC(Pin(%d), atten=%d)" % (self._gpio, self._atten)

    def atten(self, atten):
        if atten not in (0, 1, 2, 3):
            raise ValueError("invalid atten")
        self._atten = atten

    def width(self, bits):
        if bits != 12:
            raise ValueError("invalid width")

    def _mv(self):
        e = hw.env()
        e.refresh()
        if e.faults and e.faults.get("adc%d" % self._gpio) == "open":
            v = 2.0
        else:
            v = float((e.data.get("adc_mv") or {}).get(str(self._gpio), 0.0))
        v += _noise_mv()
        return max(0.0, min(float(self._full[self._atten]), v))

    def read_uv(self):
        return int(self._mv() * 1000)

    def read(self):
        return int(self._mv() * 4095 / self._full[self._atten] + 0.5)

    def read_u16(self):
        return (self.read() << 4) | (self.read() >> 8)
