"""machine.UART of the virtual board and the serial buses (RS-485 / M-Bus / a sensor's TX line)
behind it, loaded on first use."""

# board.json: "uart": {"2": {"tx": 17, "rx": 16, "devices": [{"model": "modbus_slave",
#     "address": 1, "profile": "water_quality"}]}}; in-process: hw.uart.attach(2, model).
# UART(id, baudrate=9600, bits=8, parity=None (0 even, 1 odd), stop=1, tx=, rx=, timeout=0,
# timeout_char=0, rxbuf=256) as on the ESP32 port (ids 0-2, ESP32-C3 0-1); read(n), readinto(buf,
# n), write(buf), any(), flush(), txdone(), init(), deinit(). Reads never block beyond
# `timeout` ms (0: return what is there, None when nothing).
#
# Timing is real (time.ticks_us): a written frame takes its time on the line (11 bits per byte
# with parity, 10 without), then each device model's answer arrives byte by byte at the line
# rate after the device's turnaround time, so a driver that polls any() sees a frame grow.
# Every device sees every write (a shared RS-485 / M-Bus line); a device whose line settings
# (baud rate, data bits, parity, stop bits) differ from the UART's receives garbage and does not
# answer. Device models provide `line` = (baud, bits, parity, stop) and receive(data) -> (delay_us,
# answer bytes) or None; a free-running sender (PMS5003) provides poll(now_us) -> bytes to emit.
#
# Faults (env.json "faults"): "uart<id>": "noise" (one bit of every answer flipped: a checksum
# error) or "dead" (the line is cut: nothing arrives); "uart<id>:<address>": "absent" (that
# device never answers) or "late" (it answers after 2 s).

import time

import hw

_LINES = {"esp32": 3, "esp32s2": 2, "esp32s3": 3, "esp32c3": 2, "esp32c6": 2}


class Bus:
    def __init__(self, uart_id, tx=None, rx=None):
        self.id = uart_id
        self.tx, self.rx = tx, rx
        self.devices = []

    def attach(self, model):
        self.devices.append(model)
        model.bus = self
        return model

    def fault(self, key=None):
        e = hw.env()
        e.refresh()
        if not e.faults:
            return None
        return e.faults.get("uart%d" % self.id if key is None else "uart%d:%s" % (self.id, key))


def bus(uart_id):
    """The board's serial line `uart_id` (from board.json, created on first use)."""
    b = hw.board()
    buses = getattr(b, "uart", None)
    if buses is None:
        buses = b.uart = {}
        from hw.core import make_model

        for key, spec in (b.spec.get("uart") or {}).items():
            line = buses[int(key)] = Bus(int(key), spec.get("tx"), spec.get("rx"))
            for n, dev in enumerate(spec.get("devices") or ()):
                line.attach(make_model(dev, "uart.%s.devices[%d]" % (key, n)))
    line = buses.get(uart_id)
    if line is None:
        line = buses[uart_id] = Bus(uart_id)
    return line


def attach(uart_id, model):
    return bus(uart_id).attach(model)


def chunk_incomplete(ch, ready):
    return ch[2] + ready < len(ch[1])


class UART:
    INV_TX = 1
    INV_RX = 2

    def __init__(self, id, baudrate=9600, bits=8, parity=None, stop=1, **kw):
        if not isinstance(id, int) or not 0 <= id < _LINES.get(hw.board().chip, 3):
            raise ValueError("UART(%s) does not exist" % (id,))
        self._id = id
        self._rx = []  # [(arrival ticks_us, byte)]
        self._busy_until = time.ticks_us()
        self.init(baudrate, bits, parity, stop, **kw)

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, *, tx=None, rx=None, timeout=0,
             timeout_char=0, rxbuf=256, txbuf=256, flow=0, invert=0):
        if bits not in (5, 6, 7, 8) or stop not in (1, 2) or parity not in (None, 0, 1):
            raise ValueError("invalid UART settings")
        self._line = (baudrate, bits, parity, stop)
        self._timeout = timeout
        self._bus = bus(self._id)
        self._char_us = (1 + bits + (parity is not None) + stop) * 1000000 // baudrate

    def deinit(self):
        pass

    def __repr__(self):
        b, bits, p, s = self._line
        return "UART(%d, baudrate=%d, bits=%d, parity=%s, stop=%d)" % (self._id, b, bits, p, s)

    def _pull(self):
        for dev in self._bus.devices:
            poll = getattr(dev, "poll", None)
            if poll is not None and dev.line == self._line and self._bus.fault() != "dead":
                data = poll(time.ticks_us())
                if data:
                    self._queue(data, 0)

    def _queue(self, data, delay_us):
        # chunks [arrival of the first byte (ticks_us), bytes, bytes already read]
        if self._bus.fault() == "noise" and data:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x10
        t = time.ticks_add(time.ticks_us(), delay_us + self._char_us)
        self._rx.append([t, bytes(data), 0])
        while len(self._rx) > 16:  # the port's ring buffer keeps the newest bytes
            self._rx.pop(0)

    def _ready(self, chunk, now):
        el = time.ticks_diff(now, chunk[0])
        if el < 0:
            return 0
        return min(len(chunk[1]), el // self._char_us + 1) - chunk[2]

    def any(self):
        self._pull()
        now = time.ticks_us()
        n = 0
        for ch in self._rx:
            k = self._ready(ch, now)
            n += k
            if chunk_incomplete(ch, k):
                break
        return n

    def read(self, nbytes=None):
        deadline = time.ticks_add(time.ticks_ms(), self._timeout)
        while True:
            n = self.any()
            if n and (nbytes is None or n >= nbytes) or \
                    time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                break
            time.sleep_ms(1)
        if not n:
            return None
        if nbytes is not None:
            n = min(n, nbytes)
        out = bytearray()
        while len(out) < n:
            ch = self._rx[0]
            take = min(n - len(out), len(ch[1]) - ch[2])
            out += ch[1][ch[2]:ch[2] + take]
            ch[2] += take
            if ch[2] == len(ch[1]):
                self._rx.pop(0)
        return bytes(out)

    def readinto(self, buf, nbytes=None):
        data = self.read(len(buf) if nbytes is None else nbytes)
        if data is None:
            return None
        buf[:len(data)] = data
        return len(data)

    def write(self, buf):
        data = bytes(buf)
        now = time.ticks_us()
        start = now if time.ticks_diff(self._busy_until, now) < 0 else self._busy_until
        self._busy_until = time.ticks_add(start, self._char_us * len(data))
        if self._bus.fault() == "dead":
            return len(data)
        for dev in self._bus.devices:
            recv = getattr(dev, "receive", None)
            if recv is None or dev.line != self._line:
                continue  # wrong line settings: the device hears noise and keeps quiet
            ans = recv(data)
            if ans is None:
                continue
            delay_us, out = ans
            key = getattr(dev, "fault_key", None)
            f = self._bus.fault(key) if key is not None else None
            if f == "absent":
                continue
            if f == "late":
                delay_us += 2000000
            wait = time.ticks_diff(self._busy_until, time.ticks_us()) + delay_us
            self._queue(out, max(0, wait))
        return len(data)

    def flush(self):
        while not self.txdone():
            time.sleep_ms(1)

    def txdone(self):
        return time.ticks_diff(self._busy_until, time.ticks_us()) <= 0

    def sendbreak(self):
        pass
