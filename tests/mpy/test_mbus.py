# The wired M-Bus master (drivers/mbus.py) and its adapter against the meter model (hw/mbus.py,
# EN 13757-3 record layouts of water, gas and heat meters) on the virtual board's UART at
# 2400 baud 8E1, in the MicroPython unix port with the 96 KB heap.
import asyncio
import os

import machine
from hw.mbus import MBusMeter
from hw.uart import attach

import config
import cfg_serial  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import mbus
import mbusparse
import sensors
from driver_support import adapter, expect_oserror

_DIR = "vb_mbus"
_UART = {"2": {"tx": 17, "rx": 16, "baudrate": 2400, "parity": "even"}}

# A water meter's RSP_UD written out by hand from EN 13757-3: ID 12345678, manufacturer ZRI
# (0x6A49: (26<<10)|(18<<5)|9), version 1, medium 07 water, access 0x2A, status 00, then
# 0C 13 (volume, 8-digit BCD LSB first, 0.001 m3) = 56 34 12 00 -> 123.456 m3, 04 6D
# date/time (type F:
# minute 1E, hour 08, day 21 + year bits 001, month 11 + year bits 0011: 2025-11-21 08:30),
# 02 FD 17 error flags 0000. L = 0x20: C, A, CI, 12 header bytes and 17 record bytes.
_WATER = bytes.fromhex(
    "68202068" "080172" "78563412" "496a" "01" "07" "2a" "00" "0000"
    "0c13" "56341200" "046d" "1e08353b" "02fd17" "0000" "8616")


def _fix_checksum(frame):
    body = frame[4:-2]
    return frame[:-2] + bytes((sum(body) & 0xFF, 0x16))


def _board(*meters):
    try:
        os.remove(_DIR + "/env.json")
    except OSError:
        pass
    machine.vboard_configure(_DIR, {"chip": "esp32"})
    return [attach(2, m) for m in meters]


def _adapter(entry):
    return adapter(entry, {"driver": "mbus", "uart": "uart2"}, uart=_UART)


_err = expect_oserror


def test_hand_built_water_meter_frame_decodes_to_the_right_volume():
    frame = _fix_checksum(_WATER)
    assert mbus.check_long(frame, len(frame)) == len(frame)
    t = mbusparse.parse(frame)
    assert (t["id"], t["manufacturer"], t["medium"], t["access"]) == (12345678, "ZRI", 7, 42)
    recs = t["records"]
    assert recs[0][:3] == ("m3", -3, 123456)  # 123.456 m3
    assert mbusparse.scaled(recs[0][2], recs[0][1], -3) == 123456  # litres on the wire
    assert recs[1][:3] == ("datetime", 0, (2025, 11, 21, 8, 30, 0, 0))  # no seconds, winter
    assert recs[2][:3] == ("error_flags", 0, 0)
    assert t["problems"] == []


def test_corrupted_checksum_length_and_stop_byte_are_rejected_with_the_reason():
    frame = bytearray(_fix_checksum(_WATER))
    bad = bytearray(frame)
    bad[-2] ^= 0xFF
    _err(lambda: mbus.check_long(bad, len(bad)), "checksum", "offset %d" % (len(bad) - 2))
    bad = bytearray(frame)
    bad[2] += 1
    _err(lambda: mbus.check_long(bad, len(bad)), "length bytes differ at offsets 1 and 2")
    bad = bytearray(frame)
    bad[-1] = 0x00
    _err(lambda: mbus.check_long(bad, len(bad)), "stop byte 0x00")
    _err(lambda: mbus.check_long(frame, len(frame) - 4), "cut short")
    bad = bytearray(frame)
    bad[0x13 + 4] = 0x5A  # a BCD digit A inside the volume: that value is unavailable, no number
    t = mbusparse.parse(_fix_checksum(bytes(bad)))
    assert t["problems"] == [(19, "m3", "value unavailable: hex digit in BCD")], t["problems"]
    assert [r[0] for r in t["records"]] == ["datetime", "error_flags"]


def test_water_meter_over_the_line_with_dife_vife_chains_and_history():
    (m,) = _board(MBusMeter(address=5, serial=31415926, medium="water"))
    machine.vboard_set_env(mbus={"31415926": {"volume_l": 98765, "flow_l_h": 720,
                                              "flow_temp_c": 9.8}})
    a = _adapter({"address": 5})
    assert a.label == "mbus@uart2:5"
    v = asyncio.run(a.sample())
    # volume 98.765 m3 = 98765 L; flow 0.720 m3/h = 200 mL/s; flow temperature 9.8 degC
    assert v == {4: 98765, 5: 200, 1: 980}, v
    recs = a.last["records"]
    hist = [r for r in recs if r[3] == 1 and r[0] == "m3"]
    assert hist and hist[0][2] == 78765  # the due-date value (storage 1)
    assert [r for r in recs if r[4] == 1][0][:3] == ("m3", -3, 32921)  # tariff 1 (DIFE)
    back = [r for r in recs if r[7]]
    assert back and back[0][3] == 2 and back[0][7] == (0x3D,)  # storage 2, VIFE 3D


def test_gas_and_heat_meters_map_to_their_channels():
    _board(MBusMeter(address=7, serial=11112222, medium="gas"),
           MBusMeter(address=8, serial=33334444, medium="heat"))
    machine.vboard_set_env(mbus={"11112222": {"volume_l": 4321},
                                 "33334444": {"energy_kwh": 4567, "volume_l": 250000,
                                              "flow_temp_c": 70.5, "return_temp_c": 45.2}})
    assert asyncio.run(_adapter({"address": 7}).sample()) == {6: 4321}
    heat = asyncio.run(_adapter({"address": 8, "instance": 2}).sample())
    # 4567 kWh = 16441200 kJ; flow and return temperature as instances 2 and 3
    assert heat == {19 + 128: 16441200, 4 + 128: 250000, 1 + 128: 7050, 1 + 192: 4520}, heat


def test_a_value_that_cannot_be_decoded_is_left_out_and_the_total_still_sent():
    # The meter's answer as a meter with a failed temperature sensor sends it: volume 0C 13
    # 123.456 m3, flow temperature 05 5B as a 32-bit real NaN (00 00 C0 7F), return temperature
    # 0A 5E as BCD showing dashes (AA AA). The volume is sent, the temperatures are omitted (not
    # zero, not NaN), and the telegram's problems stay in `last` for diagnostics.
    _board()
    a = _adapter({"address": 5})
    body = b"\x08\x05\x72" + _WATER[7:19] + b"\x0c\x13\x56\x34\x12\x00" \
        b"\x05\x5b\x00\x00\xc0\x7f" b"\x0a\x5e\xaa\xaa"
    frame = _fix_checksum(bytes((0x68, len(body), len(body), 0x68)) + body + b"\x00\x16")

    async def answer(address):
        return frame

    a.bus.req_ud2 = answer
    a._ready = True  # no SND_NKE: no meter on the line, the answer is given above
    assert asyncio.run(a.sample()) == {4: 123456}
    assert [p[:2] for p in a.last["problems"]] == [(25, "flow_temp_C"), (31, "return_temp_C")]


def test_fcb_toggles_and_a_lost_answer_is_repeated_not_skipped():
    (m,) = _board(MBusMeter(address=5, serial=1))
    a = _adapter({"address": 5, "timeout_ms": 300})
    asyncio.run(a.sample())
    asyncio.run(a.sample())
    assert m.telegrams == 2 and a.last["access"] == 2
    machine.vboard_set_env(faults={"mbus:1": "checksum"})
    _err(lambda: asyncio.run(a.sample()), "mbus@uart2:5", "checksum")
    n = m.telegrams
    machine.vboard_set_env(faults={})
    asyncio.run(a.sample())
    # the retries kept the FCB: the meter repeated its telegram, then the next request (FCB
    # kept after the failure) got that same telegram: one new telegram for the failed read
    assert m.telegrams == n and a.last["access"] == 3, (m.telegrams, a.last["access"])


def test_secondary_addressing_selects_the_meter_by_id():
    _board(MBusMeter(address=0, serial=55550001, medium="water"),
           MBusMeter(address=0, serial=55550002, medium="gas"))
    machine.vboard_set_env(mbus={"55550001": {"volume_l": 111}, "55550002": {"volume_l": 222}})
    assert asyncio.run(_adapter({"secondary": "55550002"}).sample()) == {6: 222}
    assert asyncio.run(_adapter({"secondary": "55550001"}).sample())[4] == 111
    _err(lambda: asyncio.run(_adapter({"secondary": "55550009", "timeout_ms": 200}).sample()),
         "no answer")


def test_meter_errors_raise_the_sensor_alarm_and_line_faults_are_errors():
    _board(MBusMeter(address=5, serial=9))
    a = _adapter({"address": 5, "timeout_ms": 200})
    machine.vboard_set_env(mbus={"9": {"error_flags": 4}})
    assert asyncio.run(a.sample())[16] == 8
    machine.vboard_set_env(mbus={"9": {"error_flags": 0}})
    assert asyncio.run(a.sample())[16] == 0  # cleared: reported once
    assert 16 not in asyncio.run(a.sample())
    for fault, words in (("length", "length bytes differ"), ("short", "cut short")):
        machine.vboard_set_env(faults={"mbus:9": fault})
        _err(lambda: asyncio.run(a.sample()), words)
    machine.vboard_set_env(faults={"uart2:5": "absent"})
    _err(lambda: asyncio.run(a.sample()), "no valid answer after 3 tries", "no answer")


def test_config_needs_one_address():
    c = config._Checker()
    sensors.validate_hw(c, {"uart": _UART, "sensors": [
        {"driver": "mbus", "uart": "uart2"},
        {"driver": "mbus", "uart": "uart2", "address": 251}]}, {})
    text = "; ".join(c.errors)
    assert "sensors[0] needs exactly one of address (primary) or secondary" in text, text
    assert "sensors[1].address must be a primary address 1-250" in text, text
