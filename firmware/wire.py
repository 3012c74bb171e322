"""Reading messages of wire format v1 (docs/wire-format.md), built on the node.

    [version, seq, time, record, record, ...]

A record is a map {0: seconds since the previous record (omitted when 0), key: value, ...};
later records carry each channel as a delta from the closest preceding record that has it.
All values are scaled integers; nothing here allocates floats.

    enc = cbor.Encoder(256)
    n = encode_reading(enc, seq, t0, records)    # records: [(time, {key: value}), ...]
    payload = enc.view()                          # n records made it into the buffer

`records` is a list of (time, values) pairs in time order with consecutive sequence numbers
starting at `seq`. `time` is Unix seconds, or, when the clock is not set, the node's uptime in
seconds (then pass `now_uptime` so the message carries the first record's age instead).
"""

from micropython import const

VERSION = const(1)
MAX_RECORDS = const(64)


def relative_time(age_s):
    """The `time` field for a node without wall-clock time: -1 - age."""
    return -1 - age_s


def encode_reading(enc, seq, records, *, now_uptime=None):
    """Encodes as many of `records` as fit in `enc`'s buffer (at most MAX_RECORDS) and returns
    how many it took; 0 means not even one record fits (the buffer is too small).

    With `now_uptime` set, record times are uptime seconds and the message carries the first
    record's age (relative time); otherwise record times are Unix seconds.
    """
    total = min(len(records), MAX_RECORDS)
    while total > 0:
        enc.reset()
        try:
            _encode(enc, seq, records, total, now_uptime)
            return total
        except OverflowError:
            total -= 1
    enc.reset()
    return 0


def _encode(enc, seq, records, count, now_uptime):
    first_time = records[0][0]
    enc.array(3 + count)
    enc.int(VERSION)
    enc.int(seq)
    if now_uptime is None:
        enc.int(first_time)
    else:
        enc.int(relative_time(now_uptime - first_time))
    prev_time = first_time
    last = {}
    for i in range(count):
        t, values = records[i]
        dt = t - prev_time
        if dt < 0:
            raise ValueError("records out of time order")
        prev_time = t
        keys = sorted(values)
        enc.map(len(keys) + (1 if dt else 0))
        if dt:
            enc.int(0)
            enc.int(dt)
        for k in keys:
            v = values[k]
            enc.int(k)
            if k in last:
                enc.int(v - last[k])
            else:
                enc.int(v)
            last[k] = v
