"""Per-node sequence numbers that never repeat across reboots, crashes and power loss.

The node reserves numbers in blocks: the file holds the first number *not* yet reserved. At
boot the allocator continues from that bound, so numbers handed out before a crash (all below
the old bound) are never handed out again; the unused rest of a block becomes a visible gap,
which the wire format allows. The file is written once per block, not per reading, to spare
the flash, and replaced atomically (write a temp file, then rename), so a power cut leaves
either the old or the new bound.

    seq = SeqAllocator("seq.dat", block=64, rtc=rtc_state)
    n = seq.next()

With `rtc` (firmware/rtcstate.py), the next number is also kept in RTC memory: after a deep
sleep, a reset or a watchdog reset the node continues exactly where it was, so the gateway sees
no gap; only a power cut (RTC memory lost) skips to the reserved bound.
"""

import os

from micropython import const

MAX_SEQ = const(0xFFFFFFFF)


class SeqAllocator:
    def __init__(self, path="seq.dat", block=64, rtc=None):
        self.path = path
        self.block = block
        self.rtc = rtc
        bound = self._load()
        self._bound = bound
        if rtc is not None and rtc.valid and bound - block <= rtc.seq_next <= bound:
            self._next = rtc.seq_next
        else:
            self._next = bound
            self._reserve()

    def _load(self):
        # A leftover temp file holds a bound at least as high as the file's; take the larger.
        bound = 0
        for p in (self.path, self.path + ".tmp"):
            try:
                with open(p) as f:
                    bound = max(bound, int(f.read().strip()))
            except (OSError, ValueError):
                continue
        return bound

    def _reserve(self):
        bound = self._next + self.block
        if bound > MAX_SEQ + 1:
            raise OverflowError("sequence numbers exhausted")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % bound)
        os.rename(tmp, self.path)
        self._bound = bound

    def next(self):
        if self._next >= self._bound:
            self._reserve()
        n = self._next
        self._next = n + 1
        if self.rtc is not None:
            self.rtc.seq_next = n + 1  # saved before n is used: a crash now only skips n
            self.rtc.save()
        return n

    def peek(self):
        return self._next
