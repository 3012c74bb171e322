# Rain gauges (driver "pulse", kind "rain"): config, tips counted through reed bounce, rainfall
# and intensity per reading, and the previous reading kept across deep sleep, resets and power
# loss. Against the tipping-bucket model (hw/meter.py RainGauge) on its virtual clock; the truth
# is the model's own tip count and the arithmetic below, never the driver's figures.
import os

import machine
from hw.meter import RainGauge

from pulse_support import _DIR, _adapter, _boot, _errors, _fresh, _rm, _sample, _spec

_K_TOTAL, _K_FALL, _K_INT = 23, 24, 25  # rain_total um, rainfall um, rain_intensity nm/s
_UM = 200  # 0.2 mm per tip


def _rain(**kw):
    entry = {"kind": "rain", "pin": 25, "um_per_tip": _UM, "interval_s": 600}
    entry.update(kw)
    return _spec(**entry)


def _intensity(um, seconds):
    # nm/s, rounded half up: um * 1000 / s
    return (2 * um * 1000 + seconds) // (2 * seconds)


# ------------------------------------------------------------------ config
def test_rain_config_errors_name_the_key_in_one_line():
    def one(entry, text):
        errs = _errors(dict({"driver": "pulse", "kind": "rain", "pin": 25}, **entry))
        assert len(errs) == 1 and text in errs[0] and "\n" not in errs[0], (entry, errs)

    one({}, "sensors[0].um_per_tip is required (must be an integer 1-10000")
    one({"um_per_tip": 0}, "sensors[0].um_per_tip must be an integer 1-10000")
    one({"um_per_tip": 10001}, "sensors[0].um_per_tip must be an integer 1-10000")
    one({"um_per_tip": 0.2}, "sensors[0].um_per_tip must be an integer 1-10000")
    for key, v in (("pin_b", 26), ("tamper_pin", 27), ("litres_per_pulse", 10)):
        one({"um_per_tip": 200, key: v},
            "sensors[0].%s is for water and gas meters; a rain gauge has one contact" % key)
    one({"um_per_tip": 200, "counter": "pcnt"}, "sensors[0].counter pcnt cannot debounce")
    errs = _errors({"driver": "pulse", "kind": "water", "pin": 25, "um_per_tip": 200})
    assert errs == ["sensors[0].um_per_tip is for rain gauges (kind rain): got 200"], errs
    errs = _errors({"driver": "pulse", "kind": "snow", "pin": 25})
    assert any("sensors[0].kind must be water, gas or rain" in e for e in errs), errs
    # the example of docs/drivers.md; a reed on a bucket: 50 ms debounce, interrupts
    spec = _rain()
    assert spec["um_per_tip"] == 200 and spec["debounce_ms"] == 50, spec
    assert spec["counter"] == "auto" and spec["pin_b"] is None and spec["slot"] == 0, spec
    assert _rain(um_per_tip=254, interval_s=86400)["um_per_tip"] == 254  # 0.01 in; no hour limit
    assert _spec(kind="water", pin=25)["debounce_ms"] == 10  # meters keep theirs


# ------------------------------------------------------------------ counting
def test_bounced_tips_are_counted_once_each():
    _fresh()
    g = RainGauge(a=25, closed_ms=100, bounce_ms=5, seed=9)
    a = _adapter(_rain(), g)
    assert a.counter == "irq"
    edges = [0]

    def seen(pin):
        edges[0] += 1

    spare = machine.Pin(26, machine.Pin.IN, machine.Pin.PULL_UP)
    spare.irq(seen, machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
    probe = RainGauge(a=26, bounce_ms=5, seed=9)  # the same bounce on a spare pin, counted raw
    probe.rain(200, gap_ms=700)
    assert edges[0] > 4 * 200, edges[0]  # 1-5 extra edges at every transition: real bounce
    g.rain(1500, gap_ms=700)  # a 0.2 mm bucket at 1000 mm/h: far faster than any storm
    g.step_ms(600 * 1000)
    v = _sample(a)
    assert a.meter.net == g.tips == 1500, a.meter.net
    assert v[_K_TOTAL] == v[_K_FALL] == 1500 * _UM, v


def test_without_debounce_the_same_bounce_overcounts():
    _fresh()
    g = RainGauge(a=25, bounce_ms=5, seed=4)
    a = _adapter(_rain(debounce_ms=0, counter="irq"), g)
    g.rain(100)
    assert a.meter.net > 100, a.meter.net


# ------------------------------------------------------------------ rainfall and intensity
def test_each_reading_carries_total_rainfall_and_intensity_and_rainfall_sums_to_the_total():
    _fresh()
    g = RainGauge(a=25, seed=3)
    a = _adapter(_rain(um_per_tip=254), g)
    v = _sample(a)  # the first reading, at start: nothing yet, no time passed
    assert v == {_K_TOTAL: 0, _K_FALL: 0, _K_INT: 0}, v
    readings = [v]
    # (tips, seconds to the next reading): a shower, a downpour, a dry spell, drizzle
    for tips, secs in ((7, 900), (30, 600), (0, 600), (1, 600), (3, 1)):
        t0 = g.t_us
        g.rain(tips, gap_ms=secs * 1000 // (tips + 1))
        g.step_ms(secs * 1000 - (g.t_us - t0) // 1000)
        v = _sample(a)
        um = tips * 254
        assert v == {_K_TOTAL: g.tips * 254, _K_FALL: um, _K_INT: _intensity(um, secs)}, \
            (tips, secs, v)
        readings.append(v)
    # 7 x 0.254 mm in 15 min = 1778 um / 900 s = 1975.6 nm/s, rounded up; 1 tip in 10 min =
    # 423.3 nm/s, rounded down; 3 tips in one second: 762 000 nm/s
    assert [r[_K_INT] for r in readings] == [0, 1976, 12700, 0, 423, 762000], readings
    assert sum(r[_K_FALL] for r in readings) == readings[-1][_K_TOTAL] == 41 * 254
    # a day of steady rain is not a leak: never an alarm, no night flow, only the rain channels
    for hour in range(25):
        g.rain(2, gap_ms=60000)
        g.step_ms(3600 * 1000 - 120000)
        v = _sample(a)
        assert sorted(v) == [_K_TOTAL, _K_FALL, _K_INT] and v[_K_FALL] == 508, (hour, v)
        assert v[_K_INT] == _intensity(508, 3600), v  # 0.508 mm/h = 141 nm/s


def test_a_clock_set_back_drops_only_that_intensity_and_one_second_is_the_shortest_time():
    _fresh()
    g = RainGauge(a=25)
    a = _adapter(_rain(), g)
    _sample(a)
    g.step_ms(600 * 1000)
    assert _sample(a) == {_K_TOTAL: 0, _K_FALL: 0, _K_INT: 0}
    g.rain(4)
    g.t0 -= 3600  # the clock is set an hour back
    v = _sample(a)
    assert v == {_K_TOTAL: 800, _K_FALL: 800}, v  # no rate over a negative time, the rain kept
    g.step_ms(600 * 1000 - 4000)
    g.rain(2)
    g.step_ms(4000 - 2000)
    assert _sample(a) == {_K_TOTAL: 1200, _K_FALL: 400, _K_INT: _intensity(400, 600)}
    g.t0 -= 3600
    assert _sample(a) == {_K_TOTAL: 1200, _K_FALL: 0, _K_INT: 0}  # no rain: 0 whatever the time
    # a tip wakes the node within the second of the previous reading: a rate over one second,
    # the clock's resolution
    g.step_ms(1000 - g.t_us // 1000 % 1000)  # to the start of a second
    _sample(a)
    g.pulse()  # 100 ms of closed contact, bouncing
    assert _sample(a) == {_K_TOTAL: 1400, _K_FALL: 200, _K_INT: 200000}


# ------------------------------------------------------------------ persistence
def test_rainfall_stays_exact_across_deep_sleep_resets_and_power_loss():
    _fresh()
    spec = _rain()
    g = RainGauge(a=25, seed=21)
    a = _adapter(spec, g)
    rainfall = [_sample(a)[_K_FALL]]
    since = g.time()  # the previous reading
    for cycle in range(30):
        g.rain(1 + cycle % 3, gap_ms=1500)
        if cycle % 2 == 0:
            v = _sample(a)
            assert v[_K_TOTAL] == g.tips * _UM, (cycle, v, g.tips)
            assert v.get(_K_INT) == _intensity(v[_K_FALL], g.time() - since), (cycle, v)
            rainfall.append(v[_K_FALL])
            since = g.time()
        g.rain(1, gap_ms=1500)  # counted, not yet reported
        a.save()  # the runtime saves before a sleep or a reset
        if cycle % 3 == 0:
            # deep sleep; a tip closes the contact, which wakes the chip (ext0)
            assert a.wake_pins() == ((25, 0),), a.wake_pins()
            g.step_ms(20000)
            g.hold(25, True)
            a = _boot(spec, g, cause=machine.DEEPSLEEP_RESET, wake=machine.EXT0_WAKE)
            g.forward += 1
            g.step_ms(100)
            g.hold(25, False)
            g.step_ms(500)
        elif cycle % 3 == 1:
            g.step_ms(3000)
            a = _boot(spec, g, cause=machine.HARD_RESET)
        else:
            g.step_ms(60000)  # asleep a minute, woken by the timer
            a = _boot(spec, g, cause=machine.DEEPSLEEP_RESET, wake=machine.TIMER_WAKE)
        assert a.meter.net == g.tips, (cycle, a.meter.net, g.tips)
    g.step_ms(1000)
    v = _sample(a)
    rainfall.append(v[_K_FALL])
    assert v[_K_INT] == _intensity(v[_K_FALL], g.time() - since), v  # across the boots
    assert v[_K_TOTAL] == sum(rainfall) == g.tips * _UM, (v, sum(rainfall), g.tips)
    # power loss: RTC memory gone; the journal keeps the total and the previous reading's count
    g.rain(3)
    a.save()
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(spec, g)
    g.rain(2)
    g.step_ms(300 * 1000)
    v = _sample(a)
    assert v[_K_FALL] == 5 * _UM and v[_K_TOTAL] == g.tips * _UM, v
    assert v[_K_INT] == _intensity(5 * _UM, 300 + 2), v  # over the time since the boot
    assert g.tips > 70


def test_a_reading_whose_journal_write_fails_moves_nothing_on():
    _fresh()
    spec = _rain()
    g = RainGauge(a=25)
    a = _adapter(spec, g)
    _sample(a)
    g.rain(3)
    _sample(a)  # the journal now has a record: which file the next one goes to is known
    since = g.time()
    g.rain(4)
    g.step_ms(600 * 1000)
    files = [f for f in ("pulse0a.log", "pulse0b.log") if f in os.listdir()]
    os.rename(files[-1], "kept.log")
    os.mkdir(files[-1])  # the journal cannot be written (a flash fault)
    try:
        _sample(a)
    except OSError:
        pass
    else:
        raise AssertionError("a reading was reported without its journal record")
    os.rmdir(files[-1])
    os.rename("kept.log", files[-1])
    g.rain(1)
    g.step_ms(600 * 1000)
    v = _sample(a)  # the rain of the failed reading and since, over the time since the last
    assert g.time() - since == 1205
    assert v == {_K_TOTAL: 8 * _UM, _K_FALL: 5 * _UM, _K_INT: _intensity(5 * _UM, 1205)}, v


def test_a_gauge_never_takes_over_a_water_meters_count_on_its_pin():
    from hw.meter import PulseMeter

    _fresh()
    water = _spec(kind="water", pin=25, litres_per_pulse=10)
    m = PulseMeter(a=25)
    a = _adapter(water, m)
    m.run(9)
    _sample(a)
    a.save()
    g = RainGauge(a=25)
    a = _boot(_rain(), g)  # the same pin, now wired to a rain gauge
    g.rain(2)
    assert _sample(a) == {_K_TOTAL: 400, _K_FALL: 400, _K_INT: 400 * 1000 // 2}
    a.save()
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(_rain(), g)  # from the journal: the gauge's records only
    assert a.meter.net == 2, a.meter.net


# ------------------------------------------------------------------ the env-driven gauge
def test_a_gauge_on_the_board_makes_the_tips_env_json_asks_for():
    # board.json "meters" [{"a": 25, "model": "rain_gauge"}] (hw/meter.py EnvMeter), as
    # tests/test_node_rain.py wires a node: env.json's "forward" is the tips made so far, made
    # in real time as the board looks (hw.tick()); a gauge has no reverse
    import time

    import hw
    import sensors

    _rm(_DIR + "/meters.json")
    _fresh({"board": "esp32-devkitc", "chip": "esp32",
            "meters": [{"a": 25, "model": "rain_gauge"}]})
    a = sensors.create(_rain(), sensors.Hardware({}, {"board": "esp32-devkitc"}))
    machine.vboard_set_env(meters={"25": {"forward": 3, "reverse": 2}})
    for _ in range(6):
        hw.tick()
        time.sleep_ms(110)
    assert machine.vboard().meters[0].made() == 3
    assert hw.read_json(_DIR + "/meters.json") == {"25": {"forward": 3, "reverse": 0}}
    v = _sample(a)
    assert v[_K_TOTAL] == v[_K_FALL] == 3 * _UM, v
    try:
        machine.vboard_configure(_DIR, {"meters": [{"a": 25, "model": "snow"}]})
    except ValueError as exc:
        assert "board.json meters[0]: model must be meter or rain_gauge" in str(exc), exc
    else:
        raise AssertionError("an unknown model accepted")
    machine.vboard_configure(_DIR, {})
