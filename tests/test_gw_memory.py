"""A node that sends text strings which are not valid UTF-8, over and over, does not grow the
gateway's memory: cbor2 5.9's C decoder leaked about 650 bytes per such string when it raised
(gateway/wire.py `_REPLACEMENT` says how the gateway avoids that), and every decode path a
node's payload takes is exercised here: the reading fast path, the careful reading decoder
(its error message previews the text), and status and acknowledgement maps.
"""

from __future__ import annotations

import gc
import os

import cbor2
import pytest

from gateway.downlink import decode_control
from gateway.errors import WireError
from gateway.wire import cbor_loads, decode_reading

BAD_TEXT = bytes([0x62, 0xFF, 0xFE])  # text(2), not UTF-8
READING = bytes([0x84, 0x01, 0x05, 0x18, 0x64, 0xA1, 0x01]) + BAD_TEXT  # [1, 5, 100, {1: text}]
STATUS = bytes([0xA1, 0x62]) + b"fw" + BAD_TEXT  # {"fw": text}
STATUS_KEY = bytes([0xA1]) + BAD_TEXT + bytes([0x01])  # {text: 1}
ROUNDS = 30_000  # a leak of 650 B each would be 19 MB


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hostile_round() -> None:
    with pytest.raises(WireError):
        decode_reading(READING)
    for payload in (STATUS, STATUS_KEY):
        with pytest.raises(WireError, match="not well-formed CBOR"):
            decode_control(payload, limit=512, what="status")


def test_invalid_utf8_from_a_node_costs_no_memory():
    for _ in range(2000):  # warm up: caches, the pure-Python decoder's import
        hostile_round()
    gc.collect()
    before = rss_bytes()
    for _ in range(ROUNDS):
        hostile_round()
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 4 << 20, f"memory grew {grown / 1e6:.1f} MB over {ROUNDS} hostile rounds"


def test_text_is_held_to_strict_utf8_and_a_sent_replacement_character_is_kept():
    with pytest.raises(cbor2.CBORDecodeError):
        cbor_loads(STATUS)
    assert cbor_loads(cbor2.dumps({"fw": "1.4.0 \ufffd", "n": [1, "ü"]})) == \
        {"fw": "1.4.0 \ufffd", "n": [1, "ü"]}
    assert decode_control(cbor2.dumps({"fw": "1.4.0"}), limit=512, what="status") == \
        {"fw": "1.4.0"}
