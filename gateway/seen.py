"""What each gateway instance took, told to the others (docs/gateway.md, "Several instances
on JetStream").

Instances that share the JetStream consumer each get part of every node's messages, so on its
own no instance can tell a reading the broker lost (a gap in the node's seqs) from one another
instance took. After each committed batch, an instance publishes the seqs it took, stored or
dropped as duplicates, to the `{stream}_SEEN` stream (the batches of 0.1 s as one summary); every other instance reads that stream
through its own durable consumer and marks those seqs taken in its dedup state, without their
readings. Each instance then has every node's true gaps: the `gaps` alarm holds, the lowest
named live instance asks the nodes for them (`replay`), and a reading another instance already
took is dropped as a duplicate instead of being stored twice.

    took = Took()
    took.add("n1", 7, 9)                # ingest: a reading message, seqs 7..9
    payload = took.payload()            # b'\\xa1bn1\\x82\\x07\\t'
    for node, first, last in decode(payload):    # the other instances' ingest
        ...

The payload is a CBOR map, node id -> flat array of ranges [first, last, first, last, ...].
The source publishes it and waits for the stream's acknowledgement before acknowledging the
batch's readings to JetStream: an instance that dies between its commit and the summary has
not acknowledged them either, so they come again, are dropped as duplicates and summarised
then. Nothing is lost from the shared view by a crash.
"""

from __future__ import annotations

from typing import Iterator

import cbor2

from gateway.errors import WireError

MAX_RANGE = 65536  # seqs one range may cover (a node's seq steps by at most 64 at a boot)
MAX_NODES = 100_000  # nodes in one summary (a batch is at most [ingest] batch_messages)


class Took:
    """The seqs one batch (or several, merged) took, per node."""

    def __init__(self) -> None:
        self.ranges: dict[str, list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __repr__(self) -> str:
        return f"Took(nodes={len(self.ranges)})"

    def add(self, node: str, first: int, last: int) -> None:
        r = self.ranges.get(node)
        if r is None:
            self.ranges[node] = [first, last]
        elif r[-1] + 1 == first:  # the usual case: the node's next message
            r[-1] = last
        else:
            r.append(first)
            r.append(last)

    def merge(self, other: "Took") -> None:
        """Adds another batch's ranges."""
        for node, flat in other.ranges.items():
            for i in range(0, len(flat), 2):
                self.add(node, flat[i], flat[i + 1])

    def payload(self) -> bytes:
        return cbor2.dumps(self.ranges)


def decode(payload: bytes) -> Iterator[tuple[str, int, int]]:
    """The (node, first, last) ranges of a summary; raises WireError naming what is wrong
    (before yielding anything: a bad summary is rejected whole)."""
    try:
        data = cbor2.loads(payload)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types for bad input
        raise WireError("seen_invalid", 0, f"summary is not CBOR: {exc}") from None
    if not isinstance(data, dict) or len(data) > MAX_NODES:
        raise WireError("seen_invalid", 0, "summary must be a map of node -> ranges")
    out = []
    for node, flat in data.items():
        if not isinstance(node, str) or not 0 < len(node) <= 32:
            raise WireError("seen_invalid", 0, f"summary node {node!r} is not a node id")
        if not isinstance(flat, list) or not flat or len(flat) % 2:
            raise WireError("seen_invalid", 0, f"summary ranges of {node!r} must be a "
                                               "non-empty array of first, last pairs")
        for i in range(0, len(flat), 2):
            first, last = flat[i], flat[i + 1]
            if type(first) is not int or type(last) is not int or \
                    not 0 <= first <= last < 1 << 32 or last - first >= MAX_RANGE:
                raise WireError("seen_invalid", 0, f"summary range {i // 2} of {node!r} is "
                                                   f"not 0 <= first <= last < 2^32, at most "
                                                   f"{MAX_RANGE} seqs: {first!r}..{last!r}")
            out.append((node, first, last))
    return iter(out)


def asker(me: str, heard: dict[str, float], now: float, live_s: float) -> bool:
    """Whether instance `me` asks nodes for their gaps: the lowest named of the instances
    heard from within `live_s` (itself included). One asks while all are up; when it goes
    quiet, the next takes over after `live_s`."""
    return all(me <= name for name, at in heard.items() if now - at < live_s)
