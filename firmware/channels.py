"""Channel ids of wire format v1 (the fleet-wide table is gateway/channels.json; a test checks
that these constants agree with it). A value's key on the wire is id + 64 * instance."""

from micropython import const

TEMPERATURE = const(1)  # 0.01 degC
HUMIDITY = const(2)  # 0.01 %RH
PRESSURE = const(3)  # Pa
WATER_VOLUME = const(4)  # L
WATER_FLOW = const(5)  # mL/s
GAS_VOLUME = const(6)  # 0.001 m3
BATTERY_VOLTAGE = const(7)  # mV
RSSI = const(8)  # dBm
PM1 = const(9)  # ug/m3
PM2_5 = const(10)  # ug/m3
PM10 = const(11)  # ug/m3
PH = const(12)  # 0.01 pH
CONDUCTIVITY = const(13)  # uS/cm
FREE_CHLORINE = const(14)  # 0.01 mg/L
WATER_PRESSURE = const(15)  # hPa
ALARMS = const(16)  # bits: 1 leak, 2 backflow, 4 tamper, 8 sensor fault, 16 gas, 32 flood
NIGHT_FLOW = const(17)  # uL/s
TURBIDITY = const(18)  # 0.01 NTU
HEAT_ENERGY = const(19)  # kJ
METHANE = const(20)  # 0.1 % LEL
CARBON_MONOXIDE = const(21)  # ppm
WATER_LEVEL = const(22)  # mm
RAIN_TOTAL = const(23)  # um
RAINFALL = const(24)  # um
RAIN_INTENSITY = const(25)  # nm/s
NOISE_LAEQ = const(26)  # 0.1 dB(A)
NOISE_LAMAX = const(27)  # 0.1 dB(A)
RELAY = const(28)  # 1 on, 0 off

INSTANCE_STRIDE = const(64)


def key(channel_id, instance=0):
    return channel_id + INSTANCE_STRIDE * instance


def id_of(name):
    """The id of a channel name ("water_level" -> 22), or None: the config checks' one lookup."""
    v = globals().get(str(name).upper())
    return v if isinstance(v, int) and 1 <= v <= 63 else None
