# Pulse meters: counting, bounce, backflow, leak, tamper, PCNT and config. Helpers and the
# model set-up are in pulse_support.py.
import machine

from pulse_support import (_C3, _DIR, _ESP32, _K_ALARMS, _K_FLOW, _K_GAS, _K_NIGHT,  # noqa: F401
                           _K_WATER, PulseMeter, _adapter, _boot, _errors, _fresh, _rm, _sample,
                           _spec, _water)


# ------------------------------------------------------------------ counting
def test_10000_bounced_pulses_are_counted_exactly():
    _fresh()
    m = PulseMeter(a=25, b=26, tamper=27, bounce_ms=5, seed=7)
    a = _adapter(_water(), m)
    raw = [0]

    def edges(pin):
        raw[0] += 1

    machine.Pin(26).irq(edges, machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
    m.run(10000, period_ms=100)
    assert m.forward == 10000
    # the model really bounces: contact B alone made far more edges than 2 per pulse
    assert raw[0] > 4 * 10000, raw[0]
    assert a.meter.net == 10000, a.meter.net
    assert _sample(a)[_K_WATER] == 100000  # 10 L per pulse


def test_without_debounce_the_same_bounce_overcounts():
    # the control: the model's bounce is what the debounce removes
    _fresh()
    m = PulseMeter(a=25, bounce_ms=5, seed=3)
    a = _adapter(_spec(kind="gas", pin=25, debounce_ms=0, counter="irq"), m)
    m.run(200, period_ms=100)
    assert a.meter.net > 200, a.meter.net


def test_backflow_counts_down_and_raises_then_clears_the_alarm():
    _fresh()
    m = PulseMeter(a=25, b=26, tamper=27, seed=11)
    a = _adapter(_water(), m)
    m.run(50)
    v = _sample(a)
    assert v[_K_WATER] == 500 and _K_ALARMS not in v, v
    m.run(7, reverse=True)
    v = _sample(a)
    assert v[_K_WATER] == 430, v  # reverse pulses decrease the total
    assert v[_K_ALARMS] == 2, v
    m.run(5)
    m.step_ms(3598 * 1000)
    assert _sample(a)[_K_ALARMS] == 2  # short of a full hour without reverse flow
    m.step_ms(3000)
    v = _sample(a)
    assert v[_K_ALARMS] == 0 and v[_K_WATER] == 480, v  # cleared: reported once as 0
    assert _K_ALARMS not in _sample(a)


def test_leak_after_24_hours_of_flow_clears_on_a_dry_hour_and_night_flow():
    _fresh()
    m = PulseMeter(a=25, b=26, tamper=27, seed=5)
    a = _adapter(_water(), m)
    m.step_ms(3600 * 1000 - m.t_us // 1000 % 3600000)  # to the top of an hour
    _sample(a)
    for hour in range(24):
        # 3 pulses (30 L) per hour, 2 pulses (20 L) in hour 20: the night minimum
        for _ in range(2 if hour == 20 else 3):
            m.pulse()
            m.step_ms(600 * 1000)
        m.step_ms(3600 * 1000 - m.t_us // 1000 % 3600000)
        v = _sample(a)
        if hour < 22:  # less than 24 h of history: no figure, no alarm
            assert v.get(_K_ALARMS, 0) == 0 and _K_NIGHT not in v, (hour, v)
        elif hour == 22:  # 24 h of history, the first of them without flow
            assert v.get(_K_ALARMS, 0) == 0 and v[_K_NIGHT] == 0, (hour, v)
    assert v[_K_ALARMS] == 1, v
    assert v[_K_NIGHT] == 5556, v  # 20 L/h = 5555.6 uL/s
    m.step_ms(3600 * 1000)  # an hour without flow
    v = _sample(a)
    assert v[_K_ALARMS] == 0 and v[_K_NIGHT] == 0, v


def test_tamper_loop_open_raises_and_closing_clears_even_a_short_opening_is_seen():
    _fresh()
    m = PulseMeter(a=25, tamper=27, seed=2)
    a = _adapter(_spec(kind="gas", pin=25, tamper_pin=27, litres_per_pulse=10), m)
    m.run(3)
    v = _sample(a)
    assert v == {_K_GAS: 30}, v
    m.tamper(True)
    assert _sample(a)[_K_ALARMS] == 4
    assert _sample(a)[_K_ALARMS] == 4  # repeated while it holds
    m.tamper(False)
    assert _sample(a)[_K_ALARMS] == 0
    m.tamper(True)
    m.tamper(False)  # opened and closed between two readings (a cut and a quick repair)
    assert _sample(a)[_K_ALARMS] == 4
    assert _sample(a)[_K_ALARMS] == 0


def test_cut_cable_opens_the_loop():
    _fresh()
    m = PulseMeter(a=25, b=26, tamper=27)
    a = _adapter(_water(), m)
    m.run(2)
    m.tamper(True)  # the cable is cut: loop open, the contacts read open
    v = _sample(a)
    assert v[_K_ALARMS] == 4 and v[_K_WATER] == 20, v


# ------------------------------------------------------------------ PCNT
def test_pcnt_counts_an_electronic_output_with_direction_in_hardware():
    _fresh()
    spec = _spec(kind="water", pin=25, pin_b=26, litres_per_pulse=1, debounce_ms=0)
    m = PulseMeter(a=25, b=26, bounce_ms=0)
    a = _adapter(spec, m, dict(_ESP32, pcnt_units=8))
    assert a.counter == "pcnt"
    m.run(33000)  # past the 16-bit unit's limit
    m.run(9, reverse=True)
    v = _sample(a)
    assert v[_K_WATER] == 32991 and v[_K_ALARMS] == 2, v


def test_c3_has_no_pcnt_so_auto_counts_with_interrupts():
    _fresh(_C3)
    spec = _spec(kind="gas", pin=3, tamper_pin=5, litres_per_pulse=10, debounce_ms=0)
    m = PulseMeter(a=3, tamper=5, bounce_ms=0)
    board = dict(_C3, pcnt_units=0)
    a = _adapter(spec, m, board)
    assert a.counter == "irq"
    m.run(25)
    assert _sample(a)[_K_GAS] == 250
    forced = _spec(kind="gas", pin=4, counter="pcnt", debounce_ms=0)
    try:
        _adapter(forced, m, board)
    except OSError as exc:
        assert "no PCNT" in str(exc), exc
    else:
        raise AssertionError("pcnt on a C3 accepted")


# ------------------------------------------------------------------ config
def test_config_errors_name_the_field():
    errs = _errors({"driver": "pulse"})
    assert any("sensors[0].pin is required" in e for e in errs), errs
    errs = _errors({"driver": "pulse", "pin": 25, "kind": "steam"})
    assert any("sensors[0].kind must be water, gas or rain" in e for e in errs), errs
    errs = _errors({"driver": "pulse", "pin": 25, "kind": "gas", "pin_b": 26})
    assert any("sensors[0].pin_b is for water meters" in e for e in errs), errs
    errs = _errors({"driver": "pulse", "pin": 25, "counter": "pcnt"})
    assert any("sensors[0].counter pcnt cannot debounce" in e for e in errs), errs
    errs = _errors({"driver": "pulse", "pin": 25, "tamper_pin": 25})
    assert any("must be different GPIOs" in e for e in errs), errs
    errs = _errors({"driver": "pulse", "pin": 25, "litres_per_pulse": 0})
    assert any("litres_per_pulse must be an integer 1-100000" in e for e in errs), errs
    errs = _errors({"driver": "pulse", "pin": 25}, {"driver": "pulse", "pin": 26},
                   {"driver": "pulse", "pin": 27})
    assert any("sensors[2].driver pulse: at most 2" in e for e in errs), errs
    assert _spec(pin=25)["slot"] == 0
