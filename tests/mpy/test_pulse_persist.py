# Pulse meters: the total across resets, deep sleep, power loss and torn journal writes.
# Helpers and the model set-up are in pulse_support.py.
import os

import machine

from pulse_support import (_C3, _DIR, _ESP32, _K_ALARMS, _K_FLOW, _K_GAS, _K_NIGHT,  # noqa: F401
                           _K_WATER, PulseMeter, _adapter, _boot, _errors, _fresh, _rm, _sample,
                           _spec, _water)


# ------------------------------------------------------------------ persistence
def test_totals_identical_after_100_reboots_and_100_deep_sleeps_with_pulses_between():
    _fresh()
    spec = _water()
    m = PulseMeter(a=25, b=26, tamper=27, seed=13)
    a = _adapter(spec, m)
    for cycle in range(200):
        m.run(1 + cycle % 4)
        if cycle % 7 == 3:
            m.run(1, reverse=True)
        if cycle % 3 == 0:
            _sample(a)  # reported (journaled) now and then
        a.save()
        if cycle % 2:
            a = _boot(spec, m, cause=machine.HARD_RESET)
        else:
            # deep sleep; a pulse arrives while asleep: the contact closing wakes the chip (ext0)
            pins = a.wake_pins()
            assert pins[0] == (25, 0), pins  # wake when A closes
            m.step_ms(500)
            m.hold(25, True)
            a = _boot(spec, m, cause=machine.DEEPSLEEP_RESET, wake=machine.EXT0_WAKE)
            m.forward += 1
            m.step_ms(50)
            m.hold(25, False)
            m.step_ms(50)
        assert a.meter.net == m.forward - m.reverse, (cycle, a.meter.net, m.forward, m.reverse)
    assert m.forward > 400 and m.reverse > 20
    assert _sample(a)[_K_WATER] == (m.forward - m.reverse) * 10


def test_a_pulse_shorter_than_the_boot_still_counts_once():
    _fresh()
    spec = _water()
    m = PulseMeter(a=25, b=26, tamper=27)
    a = _adapter(spec, m)
    m.run(3)
    a.save()
    # asleep; a pulse closes and opens A before the firmware runs: woken by ext0 on A
    a = _boot(spec, m, cause=machine.DEEPSLEEP_RESET, wake=machine.EXT0_WAKE)
    assert a.meter.net == 4
    a.save()
    a = _boot(spec, m, cause=machine.DEEPSLEEP_RESET, wake=machine.TIMER_WAKE)
    assert a.meter.net == 4  # a timer wake-up is not a pulse


def test_sleeping_with_the_contact_closed_wakes_on_opening_and_does_not_count_twice():
    _fresh()
    spec = _water()
    m = PulseMeter(a=25, b=26, tamper=27, bounce_ms=0)
    a = _adapter(spec, m)
    m.run(2)
    m.hold(25, True)  # a pulse in progress: counted now
    assert a.meter.net == 3
    a.save()
    assert a.wake_pins()[0] == (25, 1)  # wake when A opens
    m.hold(25, False)
    a = _boot(spec, m, cause=machine.DEEPSLEEP_RESET, wake=machine.EXT0_WAKE)
    assert a.meter.net == 3
    a.save()
    assert a.wake_pins()[0] == (25, 0)


def test_power_loss_restarts_from_the_journal_never_below_a_reported_total():
    _fresh()
    spec = _water()
    m = PulseMeter(a=25, b=26, tamper=27)
    a = _adapter(spec, m)
    m.run(12)
    reported = _sample(a)[_K_WATER]
    m.run(5)  # counted, not yet reported or saved
    a.save()  # the runtime saves before sleeping: RTC and journal
    m.run(4)  # then power is cut before the next save: these 4 are lost with the power
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(spec, m)
    v = _sample(a)[_K_WATER]
    assert v == 170 and v >= reported, (v, reported)


def test_a_torn_or_corrupted_journal_record_falls_back_and_the_journal_recovers():
    _fresh()
    spec = _water()
    m = PulseMeter(a=25, b=26, tamper=27)
    a = _adapter(spec, m)
    m.run(10)
    _sample(a)  # journal: net 10
    m.run(10)
    _sample(a)  # journal: net 20
    size = os.stat("pulse0b.log")[6]
    with open("pulse0b.log", "ab") as f:  # a write torn by power loss: half a record
        f.write(b"\x50\x4a\x01\x19\xff\xff\xff\x7f\x00\x00\x00")
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(spec, m)
    assert a.meter.net == 20  # the torn tail is ignored, no jump
    # a record whose bytes were damaged (bit flip in the total) is skipped too
    with open("pulse0b.log", "r+b") as f:
        f.seek(size - 24 + 8)
        f.write(b"\xff")
    a = _boot(spec, m)  # RTC was not saved since: the journal decides
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(spec, m)
    assert a.meter.net == 10, a.meter.net
    # the damaged file is not appended to again: the next record starts the other file
    m.run(3)
    _sample(a)
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(spec, m)
    assert a.meter.net == 13, a.meter.net


def test_the_journal_alternates_between_two_sector_sized_files():
    _fresh()
    spec = _water()
    m = PulseMeter(a=25, b=26, tamper=27, bounce_ms=0)
    a = _adapter(spec, m)
    for _ in range(400):
        m.pulse()
        _sample(a)
    sizes = [os.stat(f)[6] for f in ("pulse0a.log", "pulse0b.log")]
    assert max(sizes) <= 170 * 24, sizes
    _rm(_DIR + "/rtc_memory.bin")
    a = _boot(spec, m)
    assert a.meter.net == 400


def test_rtc_slot_keeps_the_runtime_bytes():
    _fresh()
    rtc = machine.RTC()
    rtc.memory(bytes(range(64)))
    m = PulseMeter(a=25, b=26, tamper=27)
    a = _adapter(_water(), m)
    m.run(2)
    a.save()
    mem = rtc.memory()
    assert mem[:64] == bytes(range(64)) and len(mem) == 256




def test_arm_wake_uses_ext0_for_the_contact_and_ext1_for_the_tamper_loop():
    import hw

    import sensors

    _fresh()
    m = PulseMeter(a=25, b=26, tamper=27)
    a = _adapter(_water(), m)
    a.save()
    sensors.arm_wake(a.wake_pins())
    assert hw.wake["ext0"] == {"pin": 25, "level": 0}, hw.wake  # contact A closing
    assert hw.wake["ext1"] == {"pins": [27], "level": 1}, hw.wake  # tamper loop opening
