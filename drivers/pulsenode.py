"""The node side of pulse meters and rain gauges: create() with the adapter for
firmware/sensors.py, and arm_wake() for deep sleep. The meter and the persistence of its count
are drivers/pulse.py; this module imports it, never the reverse."""

import pulse

# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py (driver "pulse"; its config is checked by
# drivers/cfg_pulse.py).


def create(spec, hw):
    return PulseSensor(spec, hw)


class PulseSensor:
    def __init__(self, spec, hw):
        import channels

        counter = spec["counter"]
        if counter == "auto":
            counter = "pcnt" if hw.board_info().get("pcnt_units", 0) > spec["slot"] * 2 + 1 \
                and not spec["debounce_ms"] else "irq"
        if counter == "pcnt":
            import esp32

            if not hasattr(esp32, "PCNT"):
                raise OSError("pulse@gpio%d: counter pcnt: this chip has no PCNT" % spec["pin"])
        self.counter = counter
        self.label = "pulse@gpio%d" % spec["pin"]
        self.interval_s = spec["interval_s"]
        rain = spec["kind"] == "rain"  # a tipping-bucket rain gauge: one tip, one pulse
        self.meter = pulse.PulseMeter(
            kind=spec["kind"], pin_a=spec["pin"], pin_b=spec["pin_b"],
            tamper_pin=spec["tamper_pin"],
            litres_per_pulse=spec["um_per_tip"] if rain else spec["litres_per_pulse"],
            debounce_ms=spec["debounce_ms"], counter=counter, slot=spec["slot"],
            ticks_ms=hw.ticks_ms, clock=hw.clock)
        inst = spec["instance"]
        water = spec["kind"] == "water"
        self.k_total = channels.key(channels.RAIN_TOTAL if rain else channels.WATER_VOLUME
                                    if water else channels.GAS_VOLUME, inst)
        self.k_rain = (channels.key(channels.RAINFALL, inst),
                       channels.key(channels.RAIN_INTENSITY, inst)) if rain else None
        self.k_flow = channels.key(channels.WATER_FLOW, inst) if water else None
        self.k_night = channels.key(channels.NIGHT_FLOW, inst) if water else None
        self.k_alarms = channels.key(channels.ALARMS, inst)

    async def sample(self):
        m = self.meter
        if self.k_rain is not None:  # total, rainfall and intensity; no hours, no alarms
            total, um, nm_s = m.rain()  # journals the count before it is reported
            values = {self.k_total: total, self.k_rain[0]: um}
            if nm_s is not None:
                values[self.k_rain[1]] = nm_s
            return values
        alarms = m.poll(report=True)  # journals a changed total before it is reported
        values = {self.k_total: m.total_l}
        if self.k_flow is not None:
            flow = m.flow_ml_s()
            if flow is not None:
                values[self.k_flow] = flow
            night = m.night_flow_ul_s()
            if night is not None:
                values[self.k_night] = night
        if alarms or alarms != m.last_alarms:
            values[self.k_alarms] = alarms
        m.last_alarms = alarms
        return values

    def wake_pins(self):
        return self.meter.wake_pins()

    def save(self):
        self.meter.save()


def arm_wake(pins):
    """Arms deep-sleep wake-up for (gpio, level) pairs from adapters' wake_pins(): the first
    pair on ext0 (one pin, either level), pairs with level 1 on ext1 (any high). On the
    ESP32-C3 (no ext0/ext1) through Pin.irq(wake=DEEPSLEEP) on GPIO 0-5."""
    import machine

    if not pins:
        return
    try:
        import esp32

        esp32.wake_on_ext0(machine.Pin(pins[0][0]), pins[0][1])
        high = [machine.Pin(g) for g, lvl in pins[1:] if lvl]
        if high:
            esp32.wake_on_ext1(high, esp32.WAKEUP_ANY_HIGH)
    except (AttributeError, ValueError):
        for g, lvl in pins:
            machine.Pin(g).irq(trigger=machine.Pin.WAKE_HIGH if lvl else machine.Pin.WAKE_LOW,
                               wake=machine.DEEPSLEEP)
