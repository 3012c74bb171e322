"""The BME280 datasheet's integer compensation (BST-BME280-DS002 section 4.2.3), written out
independently of drivers/bme280.py, and its inverse: the raw ADC values a part with this
calibration reports for given physical values. Used by the register model (hw/bme280.py)."""

# Calibration sets:
# - "production" (default): the trimming read out of a production BME280;
# - "datasheet": temperature and pressure from the BMP280/BME280 datasheet worked example
#   (dig_T1 = 27504 ...), humidity coefficients typical of production parts (H1 = 75, H2 = 362,
#   H3 = 0, H4 = 313, H5 = 50, H6 = 30);
# - or a dict with all of dig_T1..dig_T3, dig_P1..dig_P9, dig_H1..dig_H6.
#
# (Details are comments rather than docstring: loaded from source instead of frozen, a module
# compiles on the node's heap, where a docstring costs memory and a comment does not.)

CALIBRATIONS = {
    "production": {
        "dig_T1": 28209, "dig_T2": 26575, "dig_T3": 50,
        "dig_P1": 37882, "dig_P2": -10739, "dig_P3": 3024, "dig_P4": 6140, "dig_P5": -8,
        "dig_P6": -7, "dig_P7": 9900, "dig_P8": -10230, "dig_P9": 4285,
        "dig_H1": 75, "dig_H2": 354, "dig_H3": 0, "dig_H4": 339, "dig_H5": 0, "dig_H6": 30,
    },
    "datasheet": {
        "dig_T1": 27504, "dig_T2": 26435, "dig_T3": -1000,
        "dig_P1": 36477, "dig_P2": -10685, "dig_P3": 3024, "dig_P4": 2855, "dig_P5": 140,
        "dig_P6": -7, "dig_P7": 15500, "dig_P8": -14600, "dig_P9": 6000,
        "dig_H1": 75, "dig_H2": 362, "dig_H3": 0, "dig_H4": 313, "dig_H5": 50, "dig_H6": 30,
    },
}
NAMES = ("dig_T1", "dig_T2", "dig_T3", "dig_P1", "dig_P2", "dig_P3", "dig_P4", "dig_P5",
         "dig_P6", "dig_P7", "dig_P8", "dig_P9",
         "dig_H1", "dig_H2", "dig_H3", "dig_H4", "dig_H5", "dig_H6")
SKIPPED = 0x80000
SKIPPED_H = 0x8000


def _cdiv(a, b):
    """C integer division (truncates toward zero), as the datasheet's code does."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class Compensation:
    def __init__(self, calibration="production"):
        if isinstance(calibration, str):
            if calibration not in CALIBRATIONS:
                raise ValueError("unknown calibration %r (known: %s)"
                                 % (calibration, ", ".join(sorted(CALIBRATIONS))))
            calibration = CALIBRATIONS[calibration]
        missing = [n for n in NAMES if n not in calibration]
        if missing:
            raise ValueError("calibration lacks %s" % ", ".join(missing))
        self.cal = dict(calibration)
        for n in NAMES:
            setattr(self, n, calibration[n])

    def t_fine(self, adc_t):
        """Section 4.2.3, BME280_compensate_T_int32 up to t_fine."""
        t1 = self.dig_T1
        var1 = (((adc_t >> 3) - (t1 << 1)) * self.dig_T2) >> 11
        d = (adc_t >> 4) - t1
        var2 = (((d * d) >> 12) * self.dig_T3) >> 14
        return var1 + var2

    def temperature(self, adc_t):
        """0.01 degC."""
        return (self.t_fine(adc_t) * 5 + 128) >> 8

    def pressure(self, adc_p, t_fine):
        """BME280_compensate_P_int64: Pa in Q24.8 (1/256 Pa)."""
        var1 = t_fine - 128000
        var2 = var1 * var1 * self.dig_P6
        var2 = var2 + ((var1 * self.dig_P5) << 17)
        var2 = var2 + (self.dig_P4 << 35)
        var1 = ((var1 * var1 * self.dig_P3) >> 8) + ((var1 * self.dig_P2) << 12)
        var1 = (((1 << 47) + var1) * self.dig_P1) >> 33
        if var1 == 0:
            return 0
        p = 1048576 - adc_p
        p = _cdiv(((p << 31) - var2) * 3125, var1)
        var1 = (self.dig_P9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (self.dig_P8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (self.dig_P7 << 4)

    def humidity(self, adc_h, t_fine):
        """bme280_compensate_H_int32: %RH in Q22.10 (1/1024 %RH)."""
        v = t_fine - 76800
        v = ((((adc_h << 14) - (self.dig_H4 << 20) - (self.dig_H5 * v)) + 16384) >> 15) * \
            (((((((v * self.dig_H6) >> 10) * (((v * self.dig_H3) >> 11) + 32768)) >> 10)
               + 2097152) * self.dig_H2 + 8192) >> 14)
        v = v - (((((v >> 15) * (v >> 15)) >> 7) * self.dig_H1) >> 4)
        v = 0 if v < 0 else v
        v = 419430400 if v > 419430400 else v
        return v >> 12

    def invert(self, temperature_c, pressure_pa, humidity_pct):
        """Raw (adc_T, adc_P, adc_H) whose compensated values are nearest the given ones."""
        humidity_pct = min(max(humidity_pct, 0), 100)
        target_t = int(round(temperature_c * 100))
        adc_t = _avoid(_search(self.temperature, target_t, 0xFFFFF, True), SKIPPED,
                       self.temperature, target_t)
        tf = self.t_fine(adc_t)

        def p(x):
            return self.pressure(x, tf)

        def h(x):
            return self.humidity(x, tf)

        target_p = int(round(pressure_pa * 256))
        target_h = int(round(humidity_pct * 1024))
        adc_p = _avoid(_search(p, target_p, 0xFFFFF, False), SKIPPED, p, target_p)
        adc_h = _avoid(_search(h, target_h, 0xFFFF, True), SKIPPED_H, h, target_h)
        return adc_t, adc_p, adc_h


def _search(f, target, hi, rising):
    """The x in [0, hi] with f(x) nearest target, f monotonic (rising or falling)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) >> 1
        v = f(mid)
        if (v >= target) if rising else (v <= target):
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and abs(f(lo - 1) - target) <= abs(f(lo) - target):
        lo -= 1
    return lo


def _avoid(x, marker, f, target):
    if x != marker:
        return x
    return x - 1 if abs(f(x - 1) - target) <= abs(f(x + 1) - target) else x + 1
