# The node's reading encoder against the wire-format test vectors (tests/vectors/*.json).
# Runs in the MicroPython unix port (tests/mpy/run.py).
import gc
import json
import os
from binascii import hexlify

import cbor
import wire

VECTORS = os.getenv("METERLINK_ROOT") + "/tests/vectors"


def vectors():
    for name in sorted(os.listdir(VECTORS)):
        if name.endswith(".json"):
            with open(VECTORS + "/" + name) as f:
                yield json.load(f)


def records_of(inp, first_time):
    out = []
    for r in inp["records"]:
        values = {}
        for k in r["values"]:
            values[int(k)] = r["values"][k]
        out.append((first_time + r["offset"], values))
    return out


def encode_vector(v, size=1024):
    inp = v["input"]
    enc = cbor.Encoder(size)
    if "age" in inp:
        uptime0 = 5000  # any uptime: only the age reaches the wire
        recs = records_of(inp, uptime0)
        n = wire.encode_reading(enc, inp["seq"], recs, now_uptime=uptime0 + inp["age"])
    else:
        recs = records_of(inp, inp["time"])
        n = wire.encode_reading(enc, inp["seq"], recs)
    return n, recs, enc


def test_every_vector_encodes_to_its_hex():
    count = 0
    for v in vectors():
        n, recs, enc = encode_vector(v)
        assert n == len(recs), v["name"]
        got = hexlify(enc.view()).decode()
        assert got == v["hex"], "%s:\n got  %s\n want %s" % (v["name"], got, v["hex"])
        count += 1
    assert count >= 12, count


def test_budget_vectors_fit():
    for v in vectors():
        if v["name"].startswith("reading-8ch"):
            n, recs, enc = encode_vector(v)
            assert len(enc.view()) <= 48, (v["name"], len(enc.view()))
        if v["name"] == "batch-10x8ch":
            n, recs, enc = encode_vector(v)
            assert len(enc.view()) <= 34 * n, (len(enc.view()), n)


def test_small_buffer_takes_a_prefix_of_the_batch():
    for v in vectors():
        if v["name"] != "batch-10x8ch":
            continue
        full_n, recs, full = encode_vector(v)
        n, _, enc = encode_vector(v, size=120)
        assert 0 < n < full_n, n
        assert len(enc.view()) <= 120
        # the prefix is exactly the message the same records make on their own
        alone = cbor.Encoder(1024)
        assert wire.encode_reading(alone, v["input"]["seq"], recs[:n]) == n
        assert bytes(enc.view()) == bytes(alone.view())
        return
    raise AssertionError("batch-10x8ch vector missing")


def test_nothing_fits_returns_zero():
    enc = cbor.Encoder(8)
    assert wire.encode_reading(enc, 1, [(1763712000, {1: 2153, 2: 4523, 3: 101325})]) == 0


def test_repeated_encoding_does_not_grow_the_heap():
    enc = cbor.Encoder(256)
    recs = [(1763712000 + 60 * i, {1: 2153 + i, 2: 4523, 3: 101325, 4: 1234567 + i}) for i in range(10)]
    wire.encode_reading(enc, 1, recs)
    gc.collect()
    before = gc.mem_free()
    for i in range(300):
        wire.encode_reading(enc, i, recs)
    gc.collect()
    assert gc.mem_free() >= before - 256, (before, gc.mem_free())
