"""The node's store-and-forward queue on flash: every reading is appended here before any send
is tried, and leaves only after the broker acknowledged the message that carried it.

Layout, in folder `q/` of the node's filesystem:

    q/00000007 ...    segments, append-only, at most `seg_bytes` each (default 4096, one flash
                      sector), named by an increasing number; the highest is being appended to
    q/ack             "<acked> <dropped> <crc> [<pending> <pend_hi> <crc>]": every record with
                      seq < acked has been acknowledged; dropped counts the records ever
                      dropped because the queue was full; pending counts those dropped from
                      flash while in flight, up to seq pend_hi (replaced atomically: write
                      q/ack.tmp, then rename; a reader of the first three fields alone, an
                      older app after a rollback, still reads it)

A record is one frame:

    A5 | len (2 bytes LE) | seq (4 bytes LE) | body (len bytes) | CRC-32 (4 bytes LE)

with the CRC (binascii.crc32, the zlib polynomial) over len, seq and body. The body is the
caller's (the node stores a CBOR item). Sequence numbers increase along the queue.

Power loss: a frame is written with one write; a cut in the middle leaves a torn tail. On open,
the last segment is scanned and cut back to its last complete frame, so every complete record
is kept and no partial one is ever read. A bad frame inside an older segment (bit rot) is
skipped by searching for the next valid frame, and counted in `corrupt`.

Bounded: when the segments exceed `max_bytes`, the oldest segment is deleted; the records in it
that were not yet acknowledged are added to the persisted drop counter (reported in the node's
status as `qd`), so the count of lost readings is exact. Records the caller holds in a message
in flight (seq <= `held`, kept in RAM and sent again until acknowledged) are not lost with
their segment: they are counted `pending` until an acknowledgement covers them, and added to
`dropped` only if the node restarts first (the RAM copy is gone). Wear: appends only, one small `q/ack`
write per acknowledged message, a segment deleted when all of it is acknowledged and `keep`
newer ones are too; nothing is ever rewritten in place.

Kept: the newest `keep` (2) whole segments of acknowledged records stay on flash until space is
needed, so that the node can send a range again when the gateway finds it missing (a broker
that acknowledged a message it then lost: docs/node-runtime.md, "Sending a range again").

Why our own: there is no flash-queue library for MicroPython, and this one is a few hundred
bytes of bytecode that allocates only the record being read or written.

    q = FlashQueue("q", max_bytes=65536)
    q.append(seq, body)                 # durable when it returns
    for seq, body in q.peek(64, 480):   # oldest unacknowledged records, up to 64 / 480 bytes
        ...
    q.held = last_seq                   # records up to last_seq are in a message in flight
    q.ack(last_seq)                     # all records <= last_seq are acknowledged
"""

import binascii
import os
import struct

from micropython import const

_MAGIC = const(0xA5)
_HEAD = const(7)  # magic, len, seq
_TAIL = const(4)  # crc
MAX_BODY = const(1024)


def _crc(data, crc=0):
    return binascii.crc32(data, crc) & 0xFFFFFFFF


def _frame_crc(head, body):
    return _crc(body, _crc(memoryview(head)[1:]))


class FlashQueue:
    def __init__(self, root="q", max_bytes=65536, seg_bytes=4096, keep=2):
        self.root = root
        self.keep = keep  # acknowledged segments kept for `peek(.., kept=True)` (a replay)
        self.max_bytes = max(max_bytes, 2 * seg_bytes)
        self.seg_bytes = seg_bytes
        self.corrupt = 0  # bad frames skipped (not torn tails) since boot
        self.truncated = 0  # bytes of torn tail cut off at open
        self._head = bytearray(_HEAD)
        try:
            os.mkdir(root)
        except OSError:
            pass
        self.held = -1  # the last seq the caller holds in RAM in a message in flight
        self.acked, self.dropped, pending, _ = self._load_state()
        # dropped from flash while in flight, and the RAM copy died with the restart: lost
        self.pend_hi = -1
        self.pending = 0
        if pending:
            self.dropped += pending
            self._save_state()
        # per segment number: [first seq, last seq, unacked records, size]
        self.segs = {}
        names = []
        for name in os.listdir(root):
            if len(name) == 8 and name.isdigit():
                names.append(int(name))
        names.sort()
        for i, n in enumerate(names):
            self._scan(n, tail=(i == len(names) - 1))
        self._order = names
        self._drop_acked_segments()
        self._tail = None

    # ------------------------------------------------------------------ state file
    def _path(self, n):
        return "%s/%08d" % (self.root, n)

    def _load_state(self):
        best = None
        for p in (self.root + "/ack", self.root + "/ack.tmp"):
            try:
                with open(p) as f:
                    parts = [int(x) for x in f.read().split()]
                acked, dropped, crc = parts[0], parts[1], parts[2]
            except (OSError, ValueError, IndexError):
                continue
            if _crc(b"%d %d" % (acked, dropped)) != crc:
                continue
            pend = (0, -1)
            if len(parts) == 6 and _crc(b"%d %d" % (parts[3], parts[4])) == parts[5]:
                pend = (parts[3], parts[4])
            if best is None or acked > best[0]:
                best = (acked, dropped) + pend
        return best or (0, 0, 0, -1)

    def _save_state(self):
        tmp = self.root + "/ack.tmp"
        line = b"%d %d" % (self.acked, self.dropped)
        with open(tmp, "wb") as f:
            f.write(line + b" %d" % _crc(line))
            if self.pending:
                line = b"%d %d" % (self.pending, self.pend_hi)
                f.write(b" " + line + b" %d" % _crc(line))
            f.write(b"\n")
        os.rename(tmp, self.root + "/ack")

    # ------------------------------------------------------------------ reading frames
    def _read_frame(self, f, size, pos, floor=-1):
        """The frame at `pos`: (seq, body, end) or None when no valid frame starts there. A
        frame whose seq is below `floor` (already acknowledged or in flight, checked when the
        queue was opened or written) comes back as (seq, None, end) without reading its body."""
        if pos + _HEAD + _TAIL > size:
            return None
        f.seek(pos)
        head = self._head
        if f.readinto(head) != _HEAD or head[0] != _MAGIC:
            return None
        blen = head[1] | (head[2] << 8)
        end = pos + _HEAD + blen + _TAIL
        if blen > MAX_BODY or end > size:
            return None
        if floor >= 0:
            seq = struct.unpack("<I", memoryview(head)[3:])[0]
            if seq < floor:
                return seq, None, end
        body = f.read(blen)
        crc = f.read(_TAIL)
        if len(body) != blen or len(crc) != _TAIL:
            return None
        if struct.unpack("<I", crc)[0] != _frame_crc(head, body):
            return None
        return struct.unpack("<I", memoryview(head)[3:])[0], body, end

    def _frames(self, n, start=0, floor=-1):
        """Yields (seq, body, end) of the valid frames of segment n from `start`, skipping bad
        frames (counted in `corrupt`); bodies of frames below `floor` are not read (None)."""
        size = self.segs[n][3]
        with open(self._path(n), "rb") as f:
            pos = start
            while pos < size:
                fr = self._read_frame(f, size, pos, floor)
                if fr is None:
                    self.corrupt += 1
                    pos = self._resync(f, size, pos + 1)
                    continue
                yield fr
                pos = fr[2]

    def _resync(self, f, size, pos):
        while pos < size:
            if self._read_frame(f, size, pos) is not None:
                return pos
            pos += 1
        return size

    def _scan(self, n, tail):
        path = self._path(n)
        try:
            size = os.stat(path)[6]
        except OSError:
            return
        info = [None, None, 0, size]
        good = 0
        with open(path, "rb") as f:
            pos = 0
            while pos < size:
                fr = self._read_frame(f, size, pos)
                if fr is None:
                    if tail:
                        break  # a torn write: cut it off below
                    self.corrupt += 1
                    pos = self._resync(f, size, pos + 1)
                    continue
                seq = fr[0]
                if info[0] is None:
                    info[0] = seq
                info[1] = seq
                if seq >= self.acked:
                    info[2] += 1
                pos = good = fr[2]
        if tail and good < size:
            self._truncate(path, good)
            self.truncated += size - good
            info[3] = good
        self.segs[n] = info

    def _truncate(self, path, size):
        # No truncate() in MicroPython's file API: copy the good prefix and rename over.
        tmp = path + ".tmp"
        buf = bytearray(256)
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            left = size
            while left:
                k = src.readinto(buf)
                k = min(k, left)
                if not k:
                    break
                dst.write(memoryview(buf)[:k])
                left -= k
        os.rename(tmp, path)

    # ------------------------------------------------------------------ public API
    def __len__(self):
        """Records waiting for acknowledgement."""
        return sum(info[2] for info in self.segs.values())

    def bytes_used(self):
        return sum(info[3] for info in self.segs.values())

    def bytes_waiting(self):
        """Bytes of the segments holding unacknowledged records."""
        return sum(info[3] for info in self.segs.values() if info[2])

    def oldest(self):
        """The lowest seq still on flash, acknowledged or not (None: empty)."""
        for n in self._order:
            if self.segs[n][0] is not None:
                return self.segs[n][0]
        return None

    def append(self, seq, body):
        """Appends a record durably (flushed when this returns)."""
        blen = len(body)
        if blen > MAX_BODY:
            raise ValueError("queue record too large: %d bytes" % blen)
        head = bytearray(_HEAD)
        head[0] = _MAGIC
        head[1] = blen & 0xFF
        head[2] = blen >> 8
        struct.pack_into("<I", head, 3, seq)
        crc = struct.pack("<I", _frame_crc(head, body))
        flen = _HEAD + blen + _TAIL
        n = self._order[-1] if self._order else None
        if n is None or self.segs[n][3] + flen > self.seg_bytes:
            n = self._new_segment()
        if self._tail is None:
            self._tail = open(self._path(n), "ab")
        f = self._tail
        f.write(head + body + crc)  # one write: a cut leaves a torn tail, never a gap
        f.flush()
        info = self.segs[n]
        if info[0] is None:
            info[0] = seq
        info[1] = seq
        info[2] += 1
        info[3] += flen
        self._enforce_bound()

    def _new_segment(self):
        self._close_tail()
        n = self._order[-1] + 1 if self._order else 1
        self._order.append(n)
        self.segs[n] = [None, None, 0, 0]
        return n

    def _close_tail(self):
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    def _enforce_bound(self):
        while self.bytes_used() > self.max_bytes and len(self._order) > 1:
            n = self._order.pop(0)
            info = self.segs[n]
            lost = info[2]
            if lost:
                held = 0  # of them in a message in flight: not lost while it is
                if info[1] <= self.held:
                    held = lost
                elif info[0] <= self.held:
                    for seq, _, _ in self._frames(n, 0, self.acked):
                        if self.acked <= seq <= self.held:
                            held += 1
                if held:
                    self.pending += held
                    self.pend_hi = max(self.pend_hi, self.held)
                self.dropped += lost - held
            del self.segs[n]
            if lost:
                self._save_state()
            os.remove(self._path(n))

    def peek(self, max_records, max_bytes, after=None, kept=False):
        """The oldest unacknowledged records (seq > `after` if given) as [(seq, body)], at most
        `max_records` of them and `max_bytes` of bodies together (always at least one). With
        `kept`, acknowledged records still on flash count too (a replay: seq > `after`)."""
        out = []
        total = 0
        floor = self.acked if after is None else after + 1 if kept else max(self.acked, after + 1)
        for n in self._order:
            info = self.segs[n]
            if info[1] is None or info[1] < floor or not (info[2] or kept):
                continue
            for seq, body, _ in self._frames(n, 0, floor):
                if seq < floor:
                    continue
                if out and (len(out) >= max_records or total + len(body) > max_bytes):
                    return out
                out.append((seq, body))
                total += len(body)
        return out

    def ack(self, seq):
        """Marks every record with a sequence number <= seq as acknowledged, persistently."""
        if seq + 1 <= self.acked:
            return
        self.acked = seq + 1
        if self.pending and seq >= self.pend_hi:  # the messages that held them were delivered
            self.pending = 0
        for n in self._order:
            info = self.segs[n]
            if info[2] and info[0] is not None:
                if info[1] < self.acked:
                    info[2] = 0
                else:
                    info[2] = sum(1 for s, _, _ in self._frames(n, 0, self.acked) if s >= self.acked)
        self._save_state()
        self._drop_acked_segments()

    def _drop_acked_segments(self):
        # Whole segments whose records are all acknowledged, but the newest `keep` of them
        # (a replay reads them); never the one being appended to.
        done = 0
        for n in self._order[:-1]:
            if self.segs[n][2]:
                break
            done += 1
        while done > self.keep:
            n = self._order.pop(0)
            del self.segs[n]
            os.remove(self._path(n))
            done -= 1

    def close(self):
        self._close_tail()
