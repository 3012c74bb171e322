# Battery, analog pressure (drivers/analog.py) and RSSI adapters against the ADC model
# (hw/adc.py, noisy by +-8 mV) and the Wi-Fi model, in the MicroPython unix port, 96 KB heap.
import asyncio
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
