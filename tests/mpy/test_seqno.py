# Sequence numbers never repeat across restarts (a new allocator is what a reboot makes).
import os

import seqno


def _clean():
    for p in ("seq.dat", "seq.dat.tmp"):
        try:
            os.remove(p)
        except OSError:
            pass


def test_numbers_increase_and_never_repeat_across_restarts():
    _clean()
    seen = set()
    last = -1
    for boot in range(20):
        s = seqno.SeqAllocator("seq.dat", block=8)
        for _ in range(boot % 11):  # some boots take none, some cross a block boundary
            n = s.next()
            assert n not in seen, (boot, n)
            assert n > last, (boot, n, last)
            seen.add(n)
            last = n


def test_a_leftover_temp_file_never_lowers_the_bound():
    _clean()
    s = seqno.SeqAllocator("seq.dat", block=8)
    taken = [s.next() for _ in range(20)]
    # a crash between writing the temp file and the rename leaves both; the higher one wins
    with open("seq.dat.tmp", "w") as f:
        f.write("3\n")
    s2 = seqno.SeqAllocator("seq.dat", block=8)
    assert s2.next() > max(taken)


def test_block_reservation_writes_once_per_block():
    _clean()
    s = seqno.SeqAllocator("seq.dat", block=50)
    writes = 0
    mtime = None
    for _ in range(120):
        s.next()
        with open("seq.dat") as f:
            bound = int(f.read())
        if bound != mtime:
            writes += 1
            mtime = bound
    assert writes == 3, writes  # bounds 50, 100, 150
