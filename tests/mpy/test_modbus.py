# The Modbus RTU master (drivers/modbus.py) and its node adapter against the slave model
# (hw/modbus.py) on the virtual board's UART, in the MicroPython unix port, 96 KB heap.
import asyncio
import os

import machine
from hw.modbus import ModbusSlave
from hw.uart import attach

import config
import cfg_serial  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import modbus
import sensors
from driver_support import adapter, expect_oserror

_DIR = "vb_modbus"
_UART = {"2": {"tx": 17, "rx": 16, "baudrate": 9600}}
_PROBE = [{"reg": 0, "fn": 4, "channel": "ph"},
          {"reg": 1, "fn": 4, "channel": "turbidity"},
          {"reg": 2, "fn": 4, "channel": "conductivity"},
          {"reg": 3, "fn": 4, "channel": "free_chlorine"},
          {"reg": 4, "fn": 4, "type": "s16", "channel": "temperature"}]


def _board(**slave):
    try:
        os.remove(_DIR + "/env.json")  # the default water
    except OSError:
        pass
    machine.vboard_configure(_DIR, {"chip": "esp32"})
    return attach(2, ModbusSlave(**slave))


def _adapter(entry, uart=_UART):
    return adapter(entry, {"driver": "modbus", "uart": "uart2", "address": 1}, uart=uart)


def _sample(a):
    return asyncio.run(a.sample())


def _err(a, *needles):
    return expect_oserror(lambda: _sample(a), *needles)


def test_crc_of_the_spec_example():
    # Modbus over Serial Line: 01 03 00 00 00 01 -> CRC 0x0A84, sent low byte first: 84 0A
    c = modbus.crc16(bytes((1, 3, 0, 0, 0, 1)))
    assert (c & 255, c >> 8) == (0x84, 0x0A)


def test_water_quality_probe_register_map_to_channels():
    _board(address=1)
    machine.vboard_set_env(ph=7.43, turbidity_ntu=1.27, conductivity_us_cm=612,
                           chlorine_mg_l=0.42, water_temperature_c=-0.5)
    a = _adapter({"registers": _PROBE, "instance": 0})
    assert a.label == "modbus@uart2:1"
    # channel units: pH 0.01, NTU 0.01, uS/cm, 0.01 mg/L, 0.01 degC
    assert _sample(a) == {12: 743, 18: 127, 13: 612, 14: 42, 1: -50}


def test_flow_meter_float_and_32_bit_total_and_error_flags():
    slave = _board(address=7, profile="flow")
    machine.vboard_set_env(flow_m3_h=4.5, total_l=987654, flow_error=0)
    regs = [{"reg": 0, "type": "f32", "channel": "water_flow", "mul": 1000000, "div": 3600},
            {"reg": 2, "type": "u32", "channel": "water_volume"},
            {"reg": 4, "channel": "alarms", "mask": 1}]
    a = _adapter({"address": 7, "registers": regs})
    # 4.5 m3/h = 1250 mL/s; total 987654 L; no error
    assert _sample(a) == {5: 1250, 4: 987654, 16: 0}
    machine.vboard_set_env(flow_error=1)  # no ultrasonic signal: the sensor-fault alarm bit
    assert _sample(a)[16] == 8
    assert slave.requests == 6


def test_exception_timeout_crc_and_wrong_line_settings_are_clear_errors():
    slave = _board(address=1)
    a = _adapter({"registers": [{"reg": 9, "fn": 4, "channel": "ph"}], "retries": 2})
    _err(a, "modbus@uart2:1: ph (fn 4 reg 9)", "exception 2 (illegal data address)")
    assert slave.requests == 1  # an exception is an answer: not retried
    b = _adapter({"registers": _PROBE[:1], "timeout_ms": 50})
    machine.vboard_set_env(faults={"uart2:1": "absent"})
    _err(b, "no valid answer after 3 tries", "no answer within 50 ms")
    machine.vboard_set_env(faults={"uart2": "noise"})
    _err(b, "CRC error")
    machine.vboard_set_env(faults={})
    slave.busy = True
    _err(b, "exception 6 (slave device busy)", "after 3 tries")
    slave.busy = False
    v = _sample(b)
    assert v == {12: 720}, v
    odd = _adapter({"registers": _PROBE[:1], "timeout_ms": 50},
                   uart={"2": {"tx": 17, "rx": 16, "baudrate": 19200}})
    _err(odd, "no answer")  # the probe is set to 9600 baud


def test_a_late_answer_is_not_taken_for_the_next_request():
    _board(address=1)
    a = _adapter({"registers": _PROBE[:2], "timeout_ms": 50, "retries": 0})
    machine.vboard_set_env(faults={"uart2:1": "late"})
    _err(a, "no answer")
    machine.vboard_set_env(faults={})
    machine.vboard_set_env(ph=6.9, turbidity_ntu=2.0)
    import time

    time.sleep_ms(2100)  # the late answer arrives now, before the next request
    assert _sample(a) == {12: 690, 18: 200}


def test_register_map_errors_name_the_field():
    c = config._Checker()
    sensors.validate_hw(c, {"uart": _UART, "sensors": [
        {"driver": "modbus", "uart": "uart1", "address": 0, "registers": [
            {"reg": 0, "channel": "acidity", "type": "u8", "fn": 6}]}]}, {})
    text = "; ".join(c.errors)
    for want in ('sensors[0].uart must name a configured UART such as "uart2": got "uart1"',
                 "sensors[0].address must be a Modbus slave address 1-247: got 0",
                 "sensors[0].registers[0].fn must be 3 (holding) or 4 (input): got 6",
                 'sensors[0].registers[0].type must be one of u16, s16, u32, s32, f32: got "u8"',
                 'sensors[0].registers[0].channel must be a channel name'):
        assert want in text, (want, text)


# Product profiles: the register map is data in the config's modbus_profiles, named by the
# sensor; the maps below are the shipped boards/modbus/profiles.json entries' registers.
_GAS_LEL = {"registers": [{"reg": 0, "fn": 3, "channel": "methane"},
                          {"reg": 1, "fn": 3, "channel": "alarms", "mask": 8}]}
_NOISE = {"registers": [{"reg": 0, "channel": "noise_laeq"}, {"reg": 1, "channel": "noise_lamax"},
                        {"reg": 2, "channel": "alarms", "mask": 1}]}
_LEVEL = {"registers": [{"reg": 0, "channel": "water_level"},
                        {"reg": 2, "channel": "alarms", "mask": 1}]}


def _profiled(address, profile, instance=0):
    return adapter({"address": address, "profile": profile, "instance": instance},
                   {"driver": "modbus", "uart": "uart2"}, uart=_UART,
                   modbus_profiles={"gas_lel": _GAS_LEL, "noise": _NOISE, "level": _LEVEL})


def test_gas_detector_level_and_noise_by_profile():
    _board(address=3, profile="gas_lel")
    attach(2, ModbusSlave(address=4, profile="noise"))
    attach(2, ModbusSlave(address=5, profile="level"))
    machine.vboard_set_env(methane_lel=23.4, laeq_db=63.7, lamax_db=78.2, level_m=1.234)
    gas, noise, level = _profiled(3, "gas_lel"), _profiled(4, "noise"), _profiled(5, "level", 1)
    # channel units: methane 0.1 % LEL, noise 0.1 dB(A), level mm; key = id + 64 * instance
    assert _sample(gas) == {20: 234, 16: 0}
    assert _sample(noise) == {26: 637, 27: 782, 16: 0}
    assert _sample(level) == {22 + 64: 1234, 16 + 64: 0}
    machine.vboard_set_env(methane_lel=0.0, gas_fault=1)  # the detector's fault bit
    assert _sample(gas) == {20: 0, 16: 8}


def _errors(cfg):
    c = config._Checker()
    sensors.validate_hw(c, cfg, {})
    return c.errors


def _has(errors, *wants):
    text = "; ".join(errors)
    for want in wants:
        assert want in text, (want, text)


def test_impossible_profiles_and_unknown_profile_are_one_line_errors_naming_the_key():
    errs = _errors({"uart": _UART, "modbus_profiles": {
        "bad": {"registers": [{"reg": 65535, "type": "u32", "channel": "water_volume"},
                              {"reg": 3, "type": "f32", "channel": "alarms", "mask": 1},
                              {"reg": 4, "channel": "ph"}, {"reg": 5, "channel": "ph"},
                              {"reg": 6, "channel": "ph", "scale": 2}]},
        "empty": {"registers": []}},
        "sensors": [{"driver": "modbus", "uart": "uart2", "address": 1, "profile": "bad"},
                    {"driver": "modbus", "uart": "uart2", "address": 2, "profile": "gas"}]})
    _has(errs, "modbus_profiles.bad.registers[0].reg must be 0-65534: a u32 value takes two "
               "registers: got 65535",
         "modbus_profiles.bad.registers[1].mask needs a 16-bit register (type u16 or s16), "
         "not f32: got 1",
         'modbus_profiles.bad.registers[3].channel is already read from '
         'modbus_profiles.bad.registers[2] (one register per channel and instance): got "ph"',
         "modbus_profiles.bad.registers[4].scale is not a known setting",
         "modbus_profiles.empty must be an object with a non-empty list of registers",
         'sensors[1].profile must name a profile of modbus_profiles (bad): got "gas"')
    for e in errs:
        assert "\n" not in e and len(e) < 240, e


def test_alarm_and_relay_config_errors_name_the_key():
    errs = _errors({"uart": _UART, "modbus_profiles": {"gas_lel": _GAS_LEL},
                    "relay": {"pin": 26, "on": ["gas", "sensor"]},
                    "sensors": [
        {"driver": "modbus", "uart": "uart2", "address": 3, "profile": "gas_lel",
         "alarm": {"channel": "metane", "above": 200, "kind": "gas"}},
        {"driver": "modbus", "uart": "uart2", "address": 4, "profile": "gas_lel",
         "alarm": {"channel": "methane", "above": 200, "clear": 250, "kind": "smoke"}},
        {"driver": "modbus", "uart": "uart2", "address": 5, "profile": "gas_lel",
         "alarm": {"channel": "methane", "above": 200, "below": 10, "kind": "gas"}},
        {"driver": "modbus", "uart": "uart2", "address": 6, "profile": "gas_lel", "poll_s": 0}]})
    _has(errs, 'sensors[0].alarm.channel must be a channel name of the channel table '
               '(docs/wire-format.md): got "metane"',
         "sensors[1].alarm.kind must be one of flood, gas (the alarm bit it sets): got \"smoke\"",
         "sensors[1].alarm.clear must be an integer <= 200 (the level the alarm clears at): "
         "got 250",
         "sensors[2].alarm needs exactly one of above or below",
         "sensors[3].poll_s must be an integer 1-3600 (s): how often the alarm is watched: got 0",
         'relay.on must list the alarms that switch it on: flood and/or gas (never a sensor '
         'fault): got ["gas", "sensor"]')
