"""`network` of the MicroPython ESP32 port (1.25) for the virtual board: WLAN with the port's
state machine, constants and errors. The node's traffic really goes over the host's loopback,
so a connected interface reports 127.0.0.1."""

# The access point comes from board.json "wifi" (see the `hw` package):
# - ssid: the AP's name; connect() to another name ends in STAT_NO_AP_FOUND. No ssid: any
#   name connects.
# - key: the AP's password; a different key ends in STAT_WRONG_PASSWORD. No key: any works.
# - rssi (dBm, default -60; env.json "rssi_dbm" overrides it at run time), channel (default 6),
#   connect_ms (time from connect() to STAT_GOT_IP, default 200).
# env.json "faults": {"wifi": "down"} takes the AP away: the link drops (isconnected() False,
# status STAT_NO_AP_FOUND while the port keeps retrying) and comes back connect_ms after the
# fault is lifted, as the port's automatic reconnect does.
#
# Errors as on the port: connect() on an inactive interface raises OSError("Wifi Not Started"),
# status("rssi") while not connected OSError("Wifi Not Connected"), scan() on an inactive STA
# OSError("STA must be active"), config() with an unknown name ValueError("unknown config
# param").
#
# (Details are comments rather than docstring: loaded from source instead of frozen, a module
# compiles on the node's heap, where a docstring costs memory and a comment does not.)

import time

import hw

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY = 210
STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD = 211
STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD = 212
AUTH_OPEN = 0
AUTH_WEP = 1
AUTH_WPA_PSK = 2
AUTH_WPA2_PSK = 3
AUTH_WPA_WPA2_PSK = 4
MODE_11B = 1
MODE_11G = 2
MODE_11N = 4

_hostname = [None]  # None: the port's default, "mpy-" + chip
_ifaces = {}


def hostname(name=None):
    if name is None:
        return _hostname[0] or "mpy-" + hw.board().chip
    if len(name) > 32:
        raise ValueError("hostname too long")
    _hostname[0] = name


def _power_on(b):
    _ifaces.clear()
    _hostname[0] = None


hw.on_configure(_power_on)


class WLAN:
    IF_STA = 0
    IF_AP = 1
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2
    SEC_OPEN = 0
    SEC_WEP = 1
    SEC_WPA = 2
    SEC_WPA2 = 3
    SEC_WPA_WPA2 = 4
    SEC_WPA2_ENT = 5
    SEC_WPA3 = 6
    SEC_WPA2_WPA3 = 7

    def __new__(cls, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        w = _ifaces.get(interface_id)
        if w is None:
            w = object.__new__(cls)
            w._if = interface_id
            w._active = False
            w._requested = False
            w._since = 0  # ticks_ms of connect() or of the AP coming back
            w._was_down = False
            w._left = False  # disconnect() called
            w._ifconfig = None
            w._cfg = {"ssid": "", "key": "", "pm": WLAN.PM_PERFORMANCE, "reconnects": 0,
                      "txpower": 20, "security": WLAN.SEC_OPEN, "hidden": False,
                      "max_clients": 10, "protocol": MODE_11B | MODE_11G | MODE_11N}
            if interface_id == AP_IF:
                mac = w.config("mac")
                w._cfg["ssid"] = "ESP_%02X%02X%02X" % (mac[3], mac[4], mac[5])
            _ifaces[interface_id] = w
        return w

    def __init__(self, interface_id=STA_IF):
        pass

    def __repr__(self):
        return "<WLAN>"

    # ------------------------------------------------------------------ state
    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._requested = False

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self._if != STA_IF:
            raise OSError("STA required")
        if not self._active:
            raise OSError("Wifi Not Started")
        if ssid is not None:
            self._cfg["ssid"] = ssid
        if key is not None:
            self._cfg["key"] = key
        self._requested = True
        self._left = False
        self._was_down = False
        self._since = time.ticks_ms()

    def disconnect(self):
        self._requested = False
        self._left = True

    def _state(self):
        """STAT_* of the STA interface, evaluated lazily from the clock and the environment."""
        hw.wdt_poll()
        if not (self._active and self._requested):
            return STAT_IDLE
        b = hw.board()
        ap = b.wifi
        if b.env.fault("wifi") == "down":
            self._was_down = True
            return STAT_NO_AP_FOUND
        now = time.ticks_ms()
        if self._was_down:  # the AP is back: the port's reconnect takes connect_ms again
            self._was_down = False
            self._since = now
        if time.ticks_diff(now, self._since) < ap.get("connect_ms", 200):
            return STAT_CONNECTING
        if ap.get("ssid") is not None and ap["ssid"] != self._cfg["ssid"]:
            return STAT_NO_AP_FOUND
        if ap.get("key") is not None and ap["key"] != self._cfg["key"]:
            return STAT_WRONG_PASSWORD
        return STAT_GOT_IP

    def isconnected(self):
        if self._if == AP_IF:
            return self._active
        return self._state() == STAT_GOT_IP

    def status(self, param=None):
        if param is None:
            return self._state() if self._if == STA_IF else None
        if param == "rssi":
            if self._if != STA_IF:
                raise OSError("STA required")
            if self._state() != STAT_GOT_IP:
                raise OSError("Wifi Not Connected")
            e = hw.env()
            rssi = e.data.get("rssi_dbm")
            return int(hw.board().wifi.get("rssi", -60) if rssi is None else rssi)
        if param == "stations":
            if self._if != AP_IF:
                raise OSError("AP required")
            return []
        raise ValueError("unknown status param")

    def scan(self):
        if self._if != STA_IF or not self._active:
            raise OSError("STA must be active")
        ap = hw.board().wifi
        if not ap.get("ssid") or hw.env().fault("wifi") == "down":
            return []
        return [(ap["ssid"].encode(), b"\x24\x0a\xc4\xaa\xbb\xcc", ap.get("channel", 6),
                 int(hw.env().data.get("rssi_dbm", ap.get("rssi", -60))),
                 WLAN.SEC_WPA2 if ap.get("key") else WLAN.SEC_OPEN, False)]

    # ------------------------------------------------------------------ config
    def ifconfig(self, config=None):
        if config is not None:
            self._ifconfig = tuple(config)
        elif not self.isconnected():
            return ("0.0.0.0",) * 4
        else:
            return self._ifconfig or ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError("either pos or kw args are allowed")
        for name, value in kwargs.items():
            name = _ALIASES.get(name, name)
            if name == "hostname":
                hostname(value)
            elif name in self._cfg or name in ("mac", "channel"):
                self._cfg[name] = bytes(value) if name == "mac" else value
            else:
                raise ValueError("unknown config param")
        if kwargs:
            return None
        if len(args) != 1:
            raise TypeError("can query only one param")
        name = _ALIASES.get(args[0], args[0])
        if name == "mac" and "mac" not in self._cfg:
            # the STA MAC is the efuse base MAC (= machine.unique_id()), the AP's is +1
            mac = bytearray(hw.board().unique_id)
            mac[5] = (mac[5] + self._if) & 0xFF
            return bytes(mac)
        if name == "hostname":
            return hostname()
        if name == "channel" and "channel" not in self._cfg:
            return hw.board().wifi.get("channel", 6)
        if name == "key" or name not in self._cfg:
            raise ValueError("unknown config param")
        return self._cfg[name]


_ALIASES = {"essid": "ssid", "password": "key", "authmode": "security", "dhcp_hostname": "hostname"}
