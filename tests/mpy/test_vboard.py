# The virtual board's machine, network and esp32 modules behave like the ESP32 port's, in the
# MicroPython unix port with the 96 KB heap of a small ESP32.
import json
import os
import sys
import time

import machine
import network

_DIR = "vb_board"
_BOARD = {
    "board": "esp32-devkitc", "chip": "esp32", "unique_id": "a1b2c3d4e5f6",
    "i2c": {"0": {"scl": 22, "sda": 21, "devices": [{"model": "bme280", "address": 118}]}},
    "wifi": {"ssid": "meterlink-lab", "rssi": -61, "connect_ms": 150},
}


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _fresh(spec=_BOARD):
    for name in ("env.json", "board.json", "rtc_memory.bin", "rtc.json", "nvs.json",
                 "reset_cause.json", "deepsleep.json"):
        _rm(_DIR + "/" + name)
    return machine.vboard_configure(_DIR, spec)


def _read(path):
    with open(path) as f:
        return json.load(f)


def _raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type as exc:
        return exc
    raise AssertionError("%s not raised" % exc_type.__name__)


def _run_node(code):
    """Runs `code` in a new MicroPython process on this board folder: (exit code, output)."""
    os.putenv("VBOARD_DIR", _DIR)
    try:
        status = os.system("%s -c '%s' > %s/out.txt 2>&1" % (sys.executable, code, _DIR))
    finally:
        os.unsetenv("VBOARD_DIR")
    with open(_DIR + "/out.txt") as f:
        return status >> 8, f.read()


# ------------------------------------------------------------------ board.json and I2C
def test_board_json_is_read_from_the_node_folder():
    _fresh()
    with open(_DIR + "/board.json", "w") as f:
        json.dump(_BOARD, f)
    b = machine.vboard_configure(_DIR)
    assert b.chip == "esp32"
    assert machine.unique_id() == b"\xa1\xb2\xc3\xd4\xe5\xf6"
    assert machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21)).scan() == [0x76]


def test_empty_default_board():
    b = machine.vboard_configure(_DIR, {})
    assert b.i2c == {} and len(machine.unique_id()) == 6
    assert machine.I2C(0).scan() == []


def test_i2c_scan_and_errors_like_the_esp32_port():
    _fresh()
    i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21), freq=400000)
    assert i2c.scan() == [0x76]
    assert repr(i2c) == "I2C(0, scl=22, sda=21, freq=400000)"
    assert i2c.readfrom_mem(0x76, 0xD0, 1) == b"\x60"
    buf = bytearray(2)
    i2c.readfrom_mem_into(0x76, 0xD0, buf)
    assert buf[0] == 0x60
    assert i2c.writeto(0x76, b"\xd0") == 1
    assert i2c.readfrom(0x76, 1) == b"\x60"
    assert i2c.writevto(0x76, (b"\xf2", b"\x01")) == 2
    assert i2c.readfrom_mem(0x76, 0xF2, 1) == b"\x01"
    assert _raises(OSError, i2c.readfrom_mem, 0x40, 0, 1).errno == 19  # ENODEV: NACK
    assert _raises(OSError, i2c.writeto, 0x40, b"\x00").errno == 19
    _raises(ValueError, lambda: i2c.readfrom_mem(0x76, 0, 1, addrsize=12))
    _raises(ValueError, machine.I2C, 2)
    # other pins reach other wires: nothing there
    assert machine.I2C(1, scl=machine.Pin(25), sda=machine.Pin(26)).scan() == []
    assert machine.I2C(0, scl=machine.Pin(18), sda=machine.Pin(19)).scan() == []
    # bit-banged on the same wires reaches the same part
    assert machine.SoftI2C(scl=machine.Pin(22), sda=machine.Pin(21)).scan() == [0x76]


def test_i2c_faults_from_the_environment():
    _fresh()
    i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
    machine.vboard_set_env(faults={"i2c0:0x76": "timeout"})
    assert _raises(OSError, i2c.readfrom_mem, 0x76, 0xD0, 1).errno == 110  # ETIMEDOUT
    machine.vboard_set_env(faults={"i2c0": "timeout"})
    assert i2c.scan() == []
    machine.vboard_set_env(faults={})
    assert i2c.scan() == [0x76]


def test_attach_a_model_in_code():
    machine.vboard_configure(_DIR, {})
    from hw.bme280 import BME280

    machine.vboard_attach(1, BME280(0x77, calibration="datasheet"))
    assert machine.I2C(1, scl=machine.Pin(25), sda=machine.Pin(26)).scan() == [0x77]


# ------------------------------------------------------------------ Pin
def test_pins():
    _fresh()
    Pin = machine.Pin
    assert Pin(4) is Pin(4)
    p = Pin(4, Pin.IN, Pin.PULL_UP)
    assert p.value() == 1
    p.init(pull=Pin.PULL_DOWN)
    assert p() == 0
    o = Pin(5, Pin.OUT, value=1)
    assert o.value() == 1
    o.off()
    assert o.value() == 0
    o.toggle()
    assert o.value() == 1
    od = Pin(16, Pin.OPEN_DRAIN, Pin.PULL_UP, value=0)
    assert od.value() == 0
    od.value(1)
    assert od.value() == 1  # released: the pull-up wins
    machine.vboard_drive(16, 0)
    assert od.value() == 0  # someone else holds the line low
    _raises(ValueError, Pin, 20)  # no GPIO20 on the ESP32
    _raises(ValueError, Pin, 34, Pin.OUT)  # GPIO34..39 are input only
    assert repr(Pin(34, Pin.IN)) == "Pin(34)"


def test_pin_irq_is_registered_and_fires_on_the_edge():
    _fresh()
    Pin = machine.Pin
    seen = []
    p = Pin(4, Pin.IN, Pin.PULL_UP)
    irq = p.irq(lambda pin: seen.append(pin), Pin.IRQ_FALLING)
    assert irq.trigger() == Pin.IRQ_FALLING
    machine.vboard_drive(4, 0)
    time.sleep_ms(1)  # soft IRQ: runs at the next scheduling point
    assert seen == [p], seen
    machine.vboard_drive(4, None)  # released: rising edge, not asked for
    time.sleep_ms(1)
    assert len(seen) == 1
    state = machine.disable_irq()
    machine.vboard_drive(4, 0)
    time.sleep_ms(1)
    assert len(seen) == 1  # held while interrupts are off
    machine.enable_irq(state)
    time.sleep_ms(1)
    assert len(seen) == 2
    p.irq(None)
    machine.vboard_drive(4, 1)
    machine.vboard_drive(4, 0)
    time.sleep_ms(1)
    assert len(seen) == 2


# ------------------------------------------------------------------ reset, sleep, RTC
def test_reset_cause_is_consumed_at_boot():
    _fresh()
    assert machine.reset_cause() == machine.PWRON_RESET
    with open(_DIR + "/reset_cause.json", "w") as f:
        json.dump({"cause": machine.DEEPSLEEP_RESET, "wake": machine.TIMER_WAKE}, f)
    machine.vboard_configure(_DIR, _BOARD)
    assert machine.reset_cause() == machine.DEEPSLEEP_RESET
    assert machine.wake_reason() == machine.TIMER_WAKE
    machine.vboard_configure(_DIR, _BOARD)  # the file was consumed: next boot is a power-on
    assert machine.reset_cause() == machine.PWRON_RESET


def test_reset_and_deepsleep_exit_codes():
    _fresh()
    with open(_DIR + "/board.json", "w") as f:
        json.dump(_BOARD, f)
    rc, out = _run_node("import machine; machine.reset(); print(\"after\")")
    assert rc == 3 and "after" not in out, (rc, out)
    assert _read(_DIR + "/reset_cause.json") == {"cause": 2, "wake": 0}
    rc, out = _run_node("import machine; print(machine.reset_cause())")
    assert rc == 0 and out.strip() == "2", (rc, out)  # HARD_RESET, then consumed
    rc, out = _run_node("import machine, esp32; esp32.wake_on_ext0(machine.Pin(4), "
                        "esp32.WAKEUP_ANY_HIGH); machine.deepsleep(5000)")
    assert rc == 4, (rc, out)
    assert _read(_DIR + "/deepsleep.json") == {"ms": 5000, "ext0": {"pin": 4, "level": 1},
                                               "ext1": None}
    rc, out = _run_node("import machine; print(machine.reset_cause(), machine.wake_reason())")
    assert out.strip() == "4 4", out
    rc, out = _run_node("import machine; machine.soft_reset()")
    assert rc == 5, (rc, out)
    assert _read(_DIR + "/reset_cause.json")["cause"] == machine.SOFT_RESET


def test_rtc_memory_survives_a_restart():
    _fresh()
    rtc = machine.RTC()
    assert rtc.memory() == b""
    rtc.memory(b"total=12345")
    with open(_DIR + "/rtc_memory.bin", "rb") as f:
        assert f.read() == b"total=12345"
    machine.vboard_configure(_DIR, _BOARD)  # a new boot forgets everything in RAM
    assert machine.RTC().memory() == b"total=12345"
    _raises(ValueError, rtc.memory, bytes(2049))


def test_rtc_datetime():
    _fresh()
    rtc = machine.RTC()
    now = rtc.datetime()
    assert len(now) == 8 and now[0] >= 2024
    rtc.datetime((2030, 1, 2, 2, 3, 4, 5, 0))
    dt = rtc.datetime()
    assert dt[:6] == (2030, 1, 2, 2, 3, 4) and 5 <= dt[6] <= 7, dt  # 2030-01-02 is a Wednesday


def test_wdt_and_system_calls():
    _fresh()
    wdt = machine.WDT(timeout=2000)
    assert wdt is machine.WDT(0, 2000)
    assert 1900 <= time.ticks_diff(wdt.deadline, time.ticks_ms()) <= 2000
    wdt.feed()
    _raises(ValueError, machine.WDT, 1)
    _raises(ValueError, machine.WDT, 0, 0)
    assert machine.freq() == 160000000
    machine.freq(240000000)
    assert machine.freq() == 240000000
    _raises(ValueError, machine.freq, 100000000)
    machine.lightsleep(1)
    machine.idle()


# ------------------------------------------------------------------ network
def test_wlan_connects_to_the_boards_access_point():
    _fresh()
    wlan = network.WLAN(network.STA_IF)
    assert wlan is network.WLAN(network.STA_IF)
    assert not wlan.active()
    assert "Not Started" in str(_raises(OSError, wlan.connect, "meterlink-lab", "x"))
    wlan.active(True)
    wlan.connect("meterlink-lab", "secret")
    assert wlan.status() == network.STAT_CONNECTING and not wlan.isconnected()
    assert wlan.ifconfig()[0] == "0.0.0.0"
    _raises(OSError, wlan.status, "rssi")
    time.sleep_ms(160)
    assert wlan.isconnected() and wlan.status() == network.STAT_GOT_IP
    assert wlan.status("rssi") == -61
    machine.vboard_set_env(rssi_dbm=-75)
    assert wlan.status("rssi") == -75
    assert wlan.ifconfig()[0] == "127.0.0.1"
    assert wlan.config("mac") == machine.unique_id()
    assert wlan.config("ssid") == "meterlink-lab"
    assert network.WLAN(network.AP_IF).config("mac")[5] == 0xF7
    wlan.config(pm=wlan.PM_NONE)
    assert wlan.config("pm") == wlan.PM_NONE
    _raises(ValueError, wlan.config, "nonsense")
    wlan.disconnect()
    assert wlan.status() == network.STAT_IDLE and not wlan.isconnected()


def test_wlan_wrong_ssid_and_access_point_outage():
    _fresh()
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect("other-net", "x")
    time.sleep_ms(160)
    assert wlan.status() == network.STAT_NO_AP_FOUND and not wlan.isconnected()
    wlan.connect("meterlink-lab", "x")
    time.sleep_ms(160)
    assert wlan.isconnected()
    machine.vboard_set_env(faults={"wifi": "down"})
    assert not wlan.isconnected() and wlan.status() == network.STAT_NO_AP_FOUND
    machine.vboard_set_env(faults={})
    assert wlan.status() == network.STAT_CONNECTING  # the port reconnects by itself
    time.sleep_ms(160)
    assert wlan.isconnected()


def test_wlan_wrong_key_when_the_board_sets_one():
    spec = dict(_BOARD, wifi={"ssid": "lab", "key": "right", "connect_ms": 0})
    _fresh(spec)
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect("lab", "wrong")
    assert wlan.status() == network.STAT_WRONG_PASSWORD
    wlan.connect("lab", "right")
    assert wlan.isconnected()
    assert wlan.scan()[0][0] == b"lab"


# ------------------------------------------------------------------ esp32
def test_nvs_keeps_committed_values_only():
    _fresh()
    import esp32

    nvs = esp32.NVS("meter")
    nvs.set_i32("total", 123456)
    assert nvs.get_i32("total") == 123456
    nvs.set_blob("cal", b"\x01\x02\x03")
    buf = bytearray(8)
    assert nvs.get_blob("cal", buf) == 3 and buf[:3] == b"\x01\x02\x03"
    assert _raises(OSError, nvs.get_blob, "cal", bytearray(2)).errno == -0x110C
    assert _raises(OSError, nvs.get_i32, "nope").errno == -0x1102  # ESP_ERR_NVS_NOT_FOUND
    _raises(OverflowError, nvs.set_i32, "big", 1 << 31)
    nvs.commit()
    nvs.set_i32("lost", 1)  # never committed
    machine.vboard_configure(_DIR, _BOARD)  # reboot
    nvs = esp32.NVS("meter")
    assert nvs.get_i32("total") == 123456
    _raises(OSError, nvs.get_i32, "lost")
    nvs.erase_key("total")
    _raises(OSError, nvs.get_i32, "total")


def test_esp32_odds_and_ends():
    _fresh()
    import esp32

    machine.vboard_set_env(temperature_c=25.0)
    assert esp32.raw_temperature() == 113  # 45 degC die in Fahrenheit
    _raises(AttributeError, esp32.mcu_temperature)
    _raises(ValueError, esp32.wake_on_ext0, machine.Pin(5))  # not an RTC GPIO
    esp32.wake_on_ext1(pins=(machine.Pin(32), machine.Pin(33)), level=esp32.WAKEUP_ALL_LOW)
    info = esp32.Partition(esp32.Partition.RUNNING).info()
    assert info[0] == esp32.Partition.TYPE_APP and info[4] == "factory"
    _raises(OSError, esp32.Partition(esp32.Partition.RUNNING).get_next_update)


def test_pulse_meter_driven_by_the_environment():
    # board.json "meters" (hw/meter.py EnvMeter): the pulses env.json asks for are made in real
    # time, one each time the board looks (hw.tick(): I2C, Wi-Fi, the watchdog feed) and at
    # most one per period_ms; contacts bounce; the meter's count (meters.json) outlives the
    # chip's restarts.
    import hw

    Pin = machine.Pin
    _rm(_DIR + "/meters.json")
    _fresh(dict(_BOARD, meters=[{"a": 25, "b": 26, "tamper": 27}]))
    a = Pin(25, Pin.IN, Pin.PULL_UP)
    b = Pin(26, Pin.IN, Pin.PULL_UP)
    edges = []  # (A, B) at every falling edge of A
    a.irq(lambda p: edges.append((p.value(), b.value())), Pin.IRQ_FALLING)
    assert a.value() == 1 and Pin(27, Pin.IN, Pin.PULL_UP).value() == 0  # open; loop closed
    machine.vboard_set_env(meters={"25": {"forward": 2, "period_ms": 50}})
    hw.tick()
    made = len(edges)
    assert made >= 2, "a closing that bounces falls more than once"
    assert edges[0] == (0, 1), "forward: A closes while B is open"
    hw.tick()
    assert len(edges) == made, "the next pulse waits for its period"
    time.sleep_ms(60)
    hw.tick()
    assert len(edges) > made
    made = len(edges)
    time.sleep_ms(60)
    hw.tick()
    assert len(edges) == made, "2 pulses asked, 2 made"
    assert machine.vboard().meters[0].made() == 2 and a.value() == 1 and b.value() == 1
    assert _read(_DIR + "/meters.json") == {"25": {"forward": 2, "reverse": 0}}
    machine.vboard_set_env(meters={"25": {"forward": 2, "tamper": True}})
    hw.tick()
    assert Pin(27).value() == 1, "the tamper loop opened"
    machine.vboard_set_env(meters={"25": {"forward": 3}})
    machine.vboard_configure(_DIR, dict(_BOARD, meters=[{"a": 25}]))  # a reset
    a = Pin(25, Pin.IN, Pin.PULL_UP)
    a.irq(lambda p: edges.append((p.value(), 1)), Pin.IRQ_FALLING)
    made = len(edges)
    hw.tick()
    assert len(edges) > made, "the third pulse comes after the reset"
    assert machine.vboard().meters[0].made() == 3 and a.value() == 1
