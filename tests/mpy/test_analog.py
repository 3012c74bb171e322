# Battery, analog pressure, 4-20 mA current loop (drivers/analog.py) and RSSI adapters against
# the ADC model (hw/adc.py, noisy by +-8 mV) and the Wi-Fi model, in the MicroPython unix port,
# 96 KB heap.
import asyncio
import os
import time

import machine
import network

import analog
import config
import cfg_gpio  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import sensors
from driver_support import adapter, expect_oserror

_DIR = "vb_analog"


def _board(chip="esp32"):
    b = machine.vboard_configure(_DIR, {"chip": chip, "wifi": {"rssi": -67}})
    machine.vboard_set_env(adc_mv={}, faults={}, rssi_dbm=None)
    return b


def _adapter(entry):
    return adapter(entry, None)


_err = expect_oserror


def test_battery_through_a_1_to_1_divider_averages_the_noise():
    _board()
    machine.vboard_set_env(adc_mv={"35": 1993.5})  # a 3987 mV cell through 100k/100k
    a = _adapter({"driver": "battery", "pin": 35})
    assert a.label == "battery@adc35"
    v = asyncio.run(a.sample())[7]
    assert abs(v - 3987) <= 6, v  # single reads are up to 16 mV off at the cell
    single = analog.Battery(35, samples=1)
    spread = set(single.read_mv() for _ in range(20))
    assert max(spread) - min(spread) >= 6, spread  # the model really is noisy


def test_battery_with_an_open_divider_is_an_error_not_zero():
    _board()
    _err(lambda: asyncio.run(_adapter({"driver": "battery", "pin": 35}).sample()),
         "battery@adc35", "divider open or no battery")


def test_pressure_two_point_calibration_and_live_zero_faults():
    _board("esp32s3")
    cal = [[500, 0], [4500, 10000]]  # 0-10 bar transducer, 0.5-4.5 V
    a = _adapter({"driver": "pressure", "pin": 2, "cal": cal, "divider": [10000, 10000]})
    for out_mv, want in ((500, 0), (2500, 5000), (4500, 10000), (1300, 2000)):
        machine.vboard_set_env(adc_mv={"2": out_mv / 2})
        hpa = asyncio.run(a.sample())[15]
        # 16 reads of +-8 mV noise average to about +-2.3 mV at the transducer (1 sigma,
        # 5.8 hPa); 20 hPa is 3.5 sigma, while a wrong divider or line would be off by 100s
        assert abs(hpa - want) <= 20, (out_mv, hpa)
    machine.vboard_set_env(adc_mv={"2": 1000}, faults={"adc2": "open"})
    _err(lambda: asyncio.run(a.sample()), "below the transducer's live zero", "wire cut")
    machine.vboard_set_env(adc_mv={"2": 2400}, faults={})  # 4.8 V at the transducer
    _err(lambda: asyncio.run(a.sample()), "short to the supply")


def test_analog_config_errors_name_the_field():
    _board()
    c = config._Checker()
    sensors.validate_hw(c, {"sensors": [
        {"driver": "pressure", "pin": 34, "cal": [[500, 0], [500, 10]]},
        {"driver": "battery", "pin": 35, "divider": [100000, 0]}]}, {})
    assert any("sensors[0].cal must be two [mV, hPa] points" in e for e in c.errors), c.errors
    assert any("sensors[1].divider must be [r_top, r_bottom]" in e for e in c.errors), c.errors
    try:
        _adapter({"driver": "battery", "pin": 25})
    except ValueError as exc:
        assert "GPIO 25 is not an ADC1 input" in str(exc), exc
    else:
        raise AssertionError("ADC on GPIO 25 accepted")


def test_rssi_channel_when_connected_error_when_not():
    _board()
    a = _adapter({"driver": "rssi"})
    _err(lambda: asyncio.run(a.sample()), "rssi@wlan: Wi-Fi not connected")
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect("any", "key")
    for _ in range(100):
        if wlan.isconnected():
            break
        time.sleep_ms(10)
    assert asyncio.run(a.sample()) == {8: -67}
    machine.vboard_set_env(rssi_dbm=-80)
    assert asyncio.run(a.sample()) == {8: -80}


# ------------------------------------------------------------------- 4-20 mA current loop
# The transmitter drives the loop current through the shunt: the pin sees current x shunt,
# or with a divider after the shunt (a load in parallel with it) its share of that.
_LOOP = {"driver": "current_loop", "pin": 34, "shunt_ohm": 100, "channel": "water_level",
         "range": [0, 5000]}  # 0-5 m level transmitter; water_level is mm, channel id 22


def _pin_mv(ma, shunt, divider=None):
    if divider is None:
        return ma * shunt
    rt, rb = divider
    parallel = shunt * (rt + rb) / (shunt + rt + rb)
    return ma * parallel * rb / (rt + rb)


def _loop(entry=None):
    spec = dict(_LOOP)
    spec.update(entry or {})
    return _adapter(spec)


def _set_ma(ma, pin=34, shunt=100, divider=None):
    machine.vboard_set_env(adc_mv={str(pin): _pin_mv(ma, shunt, divider)})


class _ExactADC:
    """An ADC without the model's noise, for the integer arithmetic: the pin uV of a current."""

    def __init__(self, ua, shunt):
        self.uv = ua * shunt

    def read_uv(self):
        return self.uv


def _chip_file(chip):
    # the node's board.json (boards/<name>.json trimmed by meterlink provision); None: none
    if chip is None:
        try:
            os.remove("board.json")
        except OSError:
            pass
        return
    with open("board.json", "w") as f:
        f.write('{"chip": "%s", "name": "test"}' % chip)


def test_current_loop_scales_4_12_20_ma_to_the_range():
    _board()
    a = _loop()
    out = {}
    sensors.validate_hw(config._Checker(), {"sensors": [_LOOP]}, out)
    assert a.label == "current_loop@adc34" == sensors.label(out["sensors"][0]), a.label
    for ma in (4, 12, 20, 6.5):
        _set_ma(ma)
        want = (ma - 4) / 16 * 5000  # mm
        mm = asyncio.run(a.sample())[22]
        # 16 reads of +-8 mV noise average to about +-1.2 mV at the pin (1 sigma): 12 uA,
        # 3.8 mm; 20 mm is 5 sigma, a wrong shunt or line would be off by 100s
        assert abs(mm - want) <= 20, (ma, mm, want)
        assert abs(a.dev.read_ua() - ma * 1000) <= 50, ma


def test_current_loop_channel_and_instance_come_from_the_config():
    _board()
    a = _loop({"channel": "water_pressure", "range": [0, 16000], "instance": 1})
    _set_ma(12)
    got = asyncio.run(a.sample())
    assert list(got) == [15 + 64], got  # water_pressure is channel 15, instance 1: +64
    # a 0-16 bar transmitter at half scale: 8000 hPa (1 sigma of the noise: 12 hPa)
    assert abs(got[79] - 8000) <= 60, got


def test_current_loop_rounds_to_the_nearest_unit():
    _board()
    a = _loop({"range": [0, 1000]})
    # exact currents (no ADC noise): 16 uA of the 16 mA span is 1 unit of a 0-1000 range
    for ua, want in ((4007, 0),     # 0.4375 -> 0
                     (4008, 1),     # 0.5 -> 1 (halves round up, as the pressure line)
                     (4009, 1),     # 0.5625 -> 1
                     (11999, 500),  # 499.9375 -> 500
                     (19992, 1000)):  # 999.5 -> 1000
        a.dev._adc = _ExactADC(ua, 100)
        assert a.dev.read_ua() == ua
        assert asyncio.run(a.sample()) == {22: want}, (ua, want)
    a = _loop({"range": [1000, 0]})  # falling: a distance-to-surface transmitter
    a.dev._adc = _ExactADC(4024, 100)
    assert asyncio.run(a.sample()) == {22: 999}  # 1000 - 1.5 = 998.5 -> 999
    a = _loop({"range": [-500, 1500]})  # a span through zero
    a.dev._adc = _ExactADC(3900, 100)
    assert asyncio.run(a.sample()) == {22: -512}  # -500 - 0.1 mA / 16 mA * 2000 = -512.5


def test_current_loop_open_loop_is_an_error_not_zero():
    _board()
    a = _loop()
    _set_ma(0)  # transmitter unpowered
    _err(lambda: asyncio.run(a.sample()), "current_loop@adc34: 0.", " mA, at or below 3.6 mA: "
         "open loop, broken wire or transmitter unpowered")
    _set_ma(3.5)  # a transmitter signalling its own failure low (NE 43)
    _err(lambda: asyncio.run(a.sample()), "current_loop@adc34: 3.", "open loop")
    machine.vboard_set_env(adc_mv={"34": _pin_mv(12, 100)}, faults={"adc34": "open"})
    _err(lambda: asyncio.run(a.sample()), "broken wire")  # the wire to the pin is cut
    machine.vboard_set_env(faults={})
    a.dev._adc = _ExactADC(3600, 100)  # NE 43: 3.6 mA is a failure current
    _err(lambda: a.dev.read_ua(), "3.60 mA, at or below 3.6 mA")


def test_current_loop_over_range_and_short_are_errors():
    _board()
    a = _loop()
    _set_ma(22)  # 2200 mV: inside the 2450 mV scale
    _err(lambda: asyncio.run(a.sample()), "current_loop@adc34: 2", "over range or short circuit")
    _set_ma(40)  # a short: the pin is above full scale and the ADC reads 2450 mV (24.5 mA)
    _err(lambda: asyncio.run(a.sample()), "at or above 21 mA")
    a.dev._adc = _ExactADC(21000, 100)
    _err(lambda: a.dev.read_ua(), "21.00 mA, at or above 21 mA")


def test_current_loop_saturation_bands_are_values_as_measured():
    _board()
    a = _loop()
    for ma in (3.7, 3.8, 20.5, 20.8):  # NE 43: the transmitter saturated, not failed
        _set_ma(ma)
        want = (ma - 4) / 16 * 5000  # 3.7 mA: -93.75 mm, 20.8 mA: 5250 mm
        mm = asyncio.run(a.sample())[22]
        assert abs(mm - want) <= 20, (ma, mm, want)
    a.dev._adc = _ExactADC(3601, 100)  # the edges of the failure currents
    assert asyncio.run(a.sample()) == {22: -125}  # -0.399 mA / 16 mA * 5000 = -124.7
    a.dev._adc = _ExactADC(20999, 100)
    assert asyncio.run(a.sample()) == {22: 5312}  # 16.999 mA / 16 mA * 5000 = 5312.2


def test_current_loop_divider_after_the_shunt_on_an_esp32s3():
    # a 250 ohm shunt (1-5 V) into a 15k/10k divider; the board file says the chip
    _board("esp32s3")
    _chip_file("esp32s3")
    try:
        div = [15000, 10000]
        a = _loop({"pin": 2, "shunt_ohm": 250, "divider": div, "samples": 64})
        for ma, want in ((4, 0), (12, 2500), (20, 5000)):
            _set_ma(ma, 2, 250, div)
            mm = asyncio.run(a.sample())[22]
            # 0.4 of the shunt voltage reaches the pin: 2.5 x the noise of a plain shunt, in
            # uV; / 2.5 for a 250 ohm shunt, / 2 for 64 reads: 1.9 mm (1 sigma)
            assert abs(mm - want) <= 20, (ma, mm, want)
        c = config._Checker()
        sensors.validate_hw(c, {"sensors": [dict(_LOOP), dict(_LOOP, pin=2, shunt_ohm=140),
                                            dict(_LOOP, pin=2, shunt_ohm=150)]}, {})
        assert c.errors == [
            "sensors[0].pin must be an ADC1 GPIO 1-10 (esp32s3): got 34",
            "sensors[2].shunt_ohm must put 21 mA at or under the esp32s3 ADC's 3100 mV full "
            "scale (or add a divider), not 3150 mV: got 150"], c.errors
    finally:
        _chip_file(None)


def test_current_loop_config_errors_name_the_key():
    _board()
    bad = [({"pin": 25}, "sensors[0].pin must be an ADC1 GPIO 32-39 (esp32): got 25"),
           ({"shunt_ohm": 5}, "sensors[1].shunt_ohm must be an integer 10-1000 (ohm): got 5"),
           ({"shunt_ohm": 150},  # 21 mA x 150 ohm = 3150 mV, over the ESP32's 2450 mV
            "sensors[2].shunt_ohm must put 21 mA at or under the esp32 ADC's 2450 mV full "
            "scale (or add a divider), not 3150 mV: got 150"),
           ({"shunt_ohm": 250, "divider": [15000, 0]},
            "sensors[3].divider must be [r_top, r_bottom] in ohm (r_bottom > 0): got [15000, 0]"),
           ({"range": [100, 100]}, "sensors[4].range must be two different integers [value at "
            "4 mA, value at 20 mA] in the channel's unit: got [100, 100]"),
           ({"range": [0, 2.5]}, "sensors[5].range must be two different integers"),
           ({"range": [0]}, "sensors[6].range must be two different integers"),
           ({"channel": "water_levl"}, "sensors[7].channel must be a channel name of the "
            "channel table (docs/wire-format.md): got \"water_levl\""),
           ({"channel": "instance_stride"},  # a constant of channels.py, not a channel
            "sensors[8].channel must be a channel name"),
           ({"channel": None}, "sensors[9].channel is required"),
           ({"range": None}, "sensors[10].range is required"),
           ({"shunt_ohm": None}, "sensors[11].shunt_ohm is required"),
           ({"samples": 0}, "sensors[12].samples must be an integer 1-64: got 0")]
    entries = []
    for change, _ in bad:
        e = dict(_LOOP)
        e.update(change)
        entries.append({k: v for k, v in e.items() if v is not None})
    c = config._Checker()
    out = {}
    sensors.validate_hw(c, {"sensors": entries}, out)
    assert len(c.errors) == len(bad), c.errors  # one error per entry, nothing else
    for (_, want), got in zip(bad, c.errors):
        assert got.startswith(want) and "\n" not in got, (want, got)
    c = config._Checker()  # a divider that fits: 250 ohm || 25k, 0.4 to the pin: 2079 mV
    sensors.validate_hw(c, {"sensors": [dict(_LOOP, shunt_ohm=250, divider=[15000, 10000])]},
                        {})
    assert c.errors == [], c.errors
