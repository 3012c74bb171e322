# The flash queue (firmware/fqueue.py): durable append, acknowledgement, torn-write recovery at
# every byte offset, drop-oldest with an exact persisted counter. Runs in the MicroPython unix
# port on a real filesystem (the test's temp folder).
import os

import fqueue


def rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        os.remove(path + "/" + n)
    os.rmdir(path)


def body(seq):
    return b"reading-%d" % seq + bytes(seq % 7)


def fresh(name, **kw):
    rmtree(name)
    return fqueue.FlashQueue(name, **kw)


def seqs(q, n=1000, nbytes=1 << 20):
    return [s for s, _ in q.peek(n, nbytes)]


def test_append_peek_ack_and_reopen():
    q = fresh("qa")
    for s in range(10, 30):
        q.append(s, body(s))
    assert len(q) == 20
    got = q.peek(5, 10000)
    assert [s for s, _ in got] == [10, 11, 12, 13, 14]
    assert [b for _, b in got] == [body(s) for s in range(10, 15)]
    q.ack(14)
    assert seqs(q) == list(range(15, 30))
    assert [s for s, _ in q.peek(3, 10000, after=20)] == [21, 22, 23]
    q.close()
    q = fqueue.FlashQueue("qa")
    assert len(q) == 15 and seqs(q) == list(range(15, 30))
    q.ack(29)
    assert len(q) == 0 and q.peek(10, 1000) == []
    q.append(30, body(30))
    q.close()
    assert seqs(fqueue.FlashQueue("qa")) == [30]


def test_peek_respects_byte_budget_but_returns_at_least_one():
    q = fresh("qb")
    for s in range(5):
        q.append(s, bytes(100))
    assert seqs(q, 10, 250) == [0, 1]
    assert seqs(q, 10, 10) == [0]


def test_segments_roll_and_fully_acked_ones_are_deleted():
    q = fresh("qc", seg_bytes=256, max_bytes=1 << 20)
    for s in range(100):
        q.append(s, body(s))
    n_files = len([n for n in os.listdir("qc") if n.isdigit()])
    assert n_files > 5, n_files
    q.ack(79)
    left = len([n for n in os.listdir("qc") if n.isdigit()])
    assert left < n_files, (left, n_files)
    assert seqs(q) == list(range(80, 100))
    q.close()
    assert seqs(fqueue.FlashQueue("qc", seg_bytes=256)) == list(range(80, 100))


def test_the_newest_acknowledged_segments_are_kept_for_a_replay():
    q = fresh("qr", seg_bytes=256, max_bytes=1 << 20)
    for s in range(100):
        q.append(s, body(s))
    q.ack(79)
    assert seqs(q) == list(range(80, 100)) and len(q) == 20
    # two whole segments of acknowledged records stay, the older ones go
    kept = [s for s, _ in q.peek(1000, 1 << 20, after=-1, kept=True)]
    assert kept[-1] == 99 and kept == list(range(kept[0], 100)), kept
    assert 0 < kept[0] < 80 and q.oldest() == kept[0]
    files = len([n for n in os.listdir("qr") if n.isdigit()])
    # a range of them, read again as they were; the acknowledged state is untouched
    got = q.peek(5, 1 << 20, after=kept[0] + 2, kept=True)
    assert [s for s, _ in got] == list(range(kept[0] + 3, kept[0] + 8))
    assert all(b == body(s) for s, b in got)
    assert q.acked == 80 and seqs(q) == list(range(80, 100))
    q.close()
    q = fqueue.FlashQueue("qr", seg_bytes=256)  # and after a restart
    assert q.oldest() == kept[0] and seqs(q) == list(range(80, 100))
    # bytes_waiting counts only segments with unacknowledged records
    assert q.bytes_waiting() < q.bytes_used()
    # none kept: two segments fewer, and nothing acknowledged before the segment holding 80
    q = fresh("qr", seg_bytes=256, max_bytes=1 << 20, keep=0)
    for s in range(100):
        q.append(s, body(s))
    q.ack(79)
    assert len([n for n in os.listdir("qr") if n.isdigit()]) == files - 2
    assert kept[0] < q.oldest() <= 80, (kept[0], q.oldest())


def test_full_queue_drops_oldest_and_counts_exactly():
    q = fresh("qd", seg_bytes=256, max_bytes=1024)
    for s in range(200):
        q.append(s, body(s))
    kept = seqs(q)
    assert kept == list(range(kept[0], 200)), kept
    assert q.dropped == kept[0] == 200 - len(kept), (q.dropped, kept[0])
    assert q.bytes_used() <= 1024 + 256
    q.close()
    q = fqueue.FlashQueue("qd", seg_bytes=256, max_bytes=1024)
    assert q.dropped == 200 - len(kept), "the drop counter must survive a restart"
    # acknowledged records are not counted as dropped when their segment goes
    q.ack(199)
    for s in range(200, 400):
        q.append(s, body(s))
        q.ack(s)
    assert q.dropped == 200 - len(kept), q.dropped


def overflowed_with_0_to_9_in_flight():
    q = fresh("qh", seg_bytes=256, max_bytes=1024)
    for s in range(20):
        q.append(s, body(s))
    q.held = 9  # the node sent 0..9 in one message, not acknowledged yet
    for s in range(20, 200):
        q.append(s, body(s))
    return q


def test_records_in_flight_are_counted_dropped_only_if_a_restart_loses_them():
    # A message with seq 0..9 is in flight (the node holds it in RAM and sends it again until
    # its PUBACK) when the full queue deletes the segments holding them: not lost yet.
    q = overflowed_with_0_to_9_in_flight()
    gone = seqs(q)[0]
    assert gone > 10, gone  # the first segment and the one after it, with 8 and 9, went
    assert (q.dropped, q.pending) == (gone - 10, 10), (q.dropped, q.pending, gone)
    q.ack(9)  # the PUBACK: delivered after all
    assert (q.dropped, q.pending) == (gone - 10, 0)
    q.close()
    assert fqueue.FlashQueue("qh", seg_bytes=256, max_bytes=1024).dropped == gone - 10
    # the same, but the node restarts before the PUBACK: the RAM copy is gone, so are they
    q = overflowed_with_0_to_9_in_flight()
    assert q.pending == 10
    q.close()
    for _ in range(2):  # counted once, however often it restarts
        q = fqueue.FlashQueue("qh", seg_bytes=256, max_bytes=1024)
        assert (q.dropped, q.pending) == (gone, 0), (q.dropped, q.pending)
        q.close()


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_torn_write_recovered_at_every_byte_offset():
    # Records 0..4 complete, then record 5 written only up to byte k (power cut mid-write), for
    # every k. Recovery keeps exactly 0..4, the queue accepts new records, and they read back.
    q = fresh("qt")
    for s in range(5):
        q.append(s, body(s))
    q.close()
    seg = "qt/" + [n for n in os.listdir("qt") if n.isdigit()][0]
    good = read_file(seg)
    q = fresh("qx")
    q.append(5, body(5))
    q.close()
    frame = read_file("qx/" + [n for n in os.listdir("qx") if n.isdigit()][0])
    assert len(frame) == 7 + len(body(5)) + 4
    for k in range(len(frame)):
        rmtree("qr")
        os.mkdir("qr")
        write_file("qr/00000001", good + frame[:k])
        q = fqueue.FlashQueue("qr")
        assert seqs(q) == [0, 1, 2, 3, 4], (k, seqs(q))
        assert q.truncated == k, (k, q.truncated)
        assert q.corrupt == 0
        q.append(5, body(5))
        q.append(6, body(6))
        q.close()
        q = fqueue.FlashQueue("qr")
        got = q.peek(100, 10000)
        assert [s for s, _ in got] == list(range(7)), (k, got)
        assert got[5][1] == body(5) and got[6][1] == body(6)
        q.close()


def test_torn_ack_state_keeps_the_last_complete_one():
    q = fresh("qs")
    for s in range(10):
        q.append(s, body(s))
    q.ack(4)
    q.close()
    state = read_file("qs/ack")
    for k in range(len(state)):
        write_file("qs/ack.tmp", state[:k])  # a replacement cut mid-write
        q = fqueue.FlashQueue("qs")
        assert seqs(q) == list(range(5, 10)), (k, seqs(q))
        q.close()


def test_corrupt_frame_in_an_old_segment_is_skipped_and_counted():
    q = fresh("qk", seg_bytes=256)
    for s in range(40):
        q.append(s, body(s))
    q.close()
    first = "qk/" + sorted(n for n in os.listdir("qk") if n.isdigit())[0]
    data = bytearray(read_file(first))
    data[7 + 2] ^= 0xFF  # a flipped bit in the body of the first record
    write_file(first, data)
    q = fqueue.FlashQueue("qk", seg_bytes=256)
    got = seqs(q)
    assert got == list(range(1, 40)), got
    assert q.corrupt >= 1


def test_oversized_record_is_refused():
    q = fresh("qo")
    try:
        q.append(1, bytes(fqueue.MAX_BODY + 1))
    except ValueError as exc:
        assert "too large" in str(exc)
        return
    raise AssertionError("accepted an oversized record")
