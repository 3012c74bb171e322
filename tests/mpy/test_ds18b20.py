# DS18B20 probes (drivers/ds18b20.py) on the bit-level 1-Wire model (hw/onewire.py) through the
# virtual board's `onewire` module, in the MicroPython unix port with the 96 KB heap.
import asyncio
import os
import time

import machine
import onewire
from hw.onewire import DS18B20 as Probe
from hw.onewire import attach

import config
import cfg_gpio  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import ds18b20
import sensors
from driver_support import adapter, expect_oserror

_DIR = "vb_ds18b20"


def _board(*temps, conv_ms=750):
    try:
        os.remove(_DIR + "/env.json")
    except OSError:
        pass
    machine.vboard_configure(_DIR, {"chip": "esp32"})
    # serials chosen so the ROMs share long prefixes: the search must resolve deep conflicts
    return [attach(4, Probe(serial=s, temp_c=t, conv_ms=conv_ms))
            for s, t in zip((0x0000A5, 0x0000A4, 0x8000A5, 0x000125), temps)]


def _adapter(entry):
    return adapter(entry, {"driver": "ds18b20", "pin": 4})


_err = expect_oserror


def test_maxim_crc8_check_values():
    # Maxim application note 27: the ROM 02 1C B8 01 00 00 00 has CRC 0xA2
    assert ds18b20.crc8(bytes((0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00))) == 0xA2
    # a block followed by its own CRC checks to 0 (the property the datasheet's CRC section
    # describes)
    block = bytes((0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00, 0xA2))
    assert ds18b20.crc8(block) == 0


def test_search_finds_every_probe_and_checks_their_crc():
    probes = _board(10.0, 11.0, 12.0, 13.0)
    bus = ds18b20.DS18B20(onewire.OneWire(machine.Pin(4)))
    roms = bus.search()
    assert roms == sorted(p.rom for p in probes), [ds18b20.rom_hex(r) for r in roms]
    # the port's own OneWire.scan() agrees (as a set: it returns search order)
    assert sorted(onewire.OneWire(machine.Pin(4)).scan()) == roms


def test_temperatures_positive_negative_and_resolution():
    probes = _board(21.53, -10.125, 0.0625, -55.0)
    bus = ds18b20.DS18B20(onewire.OneWire(machine.Pin(4)))
    for p in probes:
        time.sleep_ms(bus.start(p.rom))
        # datasheet table 1: 1/16 degC steps; 21.53 -> 21.5 (0x0158), -10.125 (0xFF5E),
        # 0.0625 (0x0001), -55 (0xFC90)
    want = {probes[0].rom: 2150, probes[1].rom: -1013, probes[2].rom: 6, probes[3].rom: -5500}
    for rom, v in want.items():
        assert bus.read(rom) == v, (ds18b20.rom_hex(rom), bus.read(rom), v)


def test_power_on_value_crc_absent_probe_and_shorted_line_are_errors():
    probes = _board(20.0, 30.0)
    bus = ds18b20.DS18B20(onewire.OneWire(machine.Pin(4)), "ow4")
    _err(lambda: bus.read(probes[0].rom), "power-on value 85 C")  # never converted
    time.sleep_ms(bus.start(probes[0].rom))
    assert bus.read(probes[0].rom) == 2000
    key = "onewire4:" + probes[0].hexrom()
    machine.vboard_set_env(faults={key: "crc"})
    _err(lambda: bus.read(probes[0].rom), "ow4:" + probes[0].hexrom(), "scratchpad CRC error")
    machine.vboard_set_env(faults={key: "por"})
    _err(lambda: bus.read(probes[0].rom), "power-on value 85 C")
    machine.vboard_set_env(faults={key: "absent"})
    _err(lambda: bus.read(probes[0].rom), "probe not answering")
    assert bus.search() == [probes[1].rom]
    machine.vboard_set_env(faults={"onewire4": "short"})
    _err(bus.search, "no presence pulse", "shorted")


def a0_spec():
    c = config._Checker()
    out = {}
    sensors.validate_hw(c, {"sensors": [{"driver": "ds18b20", "pin": 4, "index": 0}]}, out)
    return out["sensors"][0]


def test_adapters_one_per_probe_by_index_or_rom():
    probes = _board(4.0, 5.5)
    roms = sorted(p.rom for p in probes)
    by_rom = dict((p.rom, p) for p in probes)
    a0 = _adapter({"index": 0, "instance": 0})
    a1 = _adapter({"rom": ds18b20.rom_hex(roms[1]), "instance": 1})
    assert a0.label == "ds18b20@ow4:#0" == sensors.label(a0_spec())
    assert a1.label == "ds18b20@ow4:" + ds18b20.rom_hex(roms[1])
    assert asyncio.run(a0.sample()) == {1: int(by_rom[roms[0]].temp_c * 100)}
    assert asyncio.run(a1.sample()) == {65: int(by_rom[roms[1]].temp_c * 100)}
    # one probe failing is that probe's error only
    machine.vboard_set_env(faults={"onewire4:" + ds18b20.rom_hex(roms[0]): "crc"})
    _err(lambda: asyncio.run(a0.sample()), "scratchpad CRC error")
    assert asyncio.run(a1.sample()) == {65: int(by_rom[roms[1]].temp_c * 100)}
    _err(lambda: _adapter({"index": 2}), "probe 2 wanted, 2 found")


def test_config_errors_name_the_field():
    c = config._Checker()
    sensors.validate_hw(c, {"sensors": [{"driver": "ds18b20", "pin": 4,
                                         "rom": "28ff4a1c0a00005f"}]}, {})
    assert any("sensors[0].rom must be the probe's ROM as 16 hex digits" in e
               for e in c.errors), c.errors


def _timed(coro):
    t0 = time.ticks_ms()
    values = asyncio.run(coro)
    return values, time.ticks_diff(time.ticks_ms(), t0)


def test_a_reading_ends_when_the_probe_says_its_conversion_is_done():
    # a probe that converts in 120 ms is read after about that long, not after 750 ms
    probes = _board(4.0, conv_ms=120)
    values, ms = _timed(_adapter({"index": 0}).sample())
    assert values == {1: 400}, values
    assert 120 <= ms < 300, ms
    # the datasheet's slowest probe: read after its full 750 ms, never before
    probes[0].conv_ms = 750
    values, ms = _timed(_adapter({"index": 0}).sample())
    assert values == {1: 400} and 750 <= ms < 950, (values, ms)


def test_a_line_shorted_during_the_conversion_is_waited_out_then_reported():
    # a shorted line reads 0 in every slot, which is also "still converting": the node waits
    # the full 750 ms, then the read finds no presence pulse
    _board(4.0, conv_ms=120)
    a = _adapter({"index": 0})

    async def short_it():
        await asyncio.sleep_ms(5)  # the conversion has started
        machine.vboard_set_env(faults={"onewire4": "short"})

    async def run():
        asyncio.create_task(short_it())
        t0 = time.ticks_ms()
        try:
            await a.sample()
        except OSError as exc:
            return str(exc), time.ticks_diff(time.ticks_ms(), t0)
        raise AssertionError("no OSError")

    msg, ms = asyncio.run(run())
    assert "no presence pulse" in msg and 750 <= ms < 950, (msg, ms)


def test_two_probes_on_one_bus_read_at_once_wait_out_each_others_commands():
    # probe 1's commands reset the bus while probe 0 converts: probe 0's read slots then answer
    # for nothing, so its reading waits the full 750 ms instead of trusting them
    probes = _board(4.0, 5.5, conv_ms=120)
    roms = sorted(p.rom for p in probes)
    by_rom = dict((p.rom, p) for p in probes)
    c = config._Checker()
    out = {}
    sensors.validate_hw(c, {"sensors": [{"driver": "ds18b20", "pin": 4, "index": i, "instance": i}
                                        for i in (0, 1)]}, out)
    hw = sensors.Hardware(out)  # as on a node: the probes of a bus share one bus object
    a0, a1 = [sensors.create(spec, hw) for spec in out["sensors"]]
    assert a0.dev is a1.dev

    async def both():
        t0 = time.ticks_ms()
        t = asyncio.create_task(a0.sample())
        await asyncio.sleep_ms(0)  # a0 has sent CONVERT T and waits
        v1 = await a1.sample()
        ms1 = time.ticks_diff(time.ticks_ms(), t0)
        v0 = await t
        return v0, v1, ms1, time.ticks_diff(time.ticks_ms(), t0)

    v0, v1, ms1, ms0 = asyncio.run(both())
    assert v0 == {1: int(by_rom[roms[0]].temp_c * 100)}, v0
    assert v1 == {65: int(by_rom[roms[1]].temp_c * 100)}, v1
    assert ms1 < 300 and 750 <= ms0 < 950, (ms1, ms0)
