"""Readings a broker lost, asked of their node again (docs/gateway.md, "Readings a broker lost").

A node deletes a reading from its queue once the broker acknowledged the message holding it.
A broker that acknowledges and then loses a message (NATS Server 2.9 while its readings stream
elects a leader) leaves a gap in the node's seqs at the gateway. The node keeps its newest
acknowledged readings on flash (firmware/fqueue.py, `keep`) and sends a range of them again on
a `replay` command; the gateway's dedup keeps one of each.

    replayer = Replayer(after_s=10)
    for node, first, last in replayer.due(box.gaps(), now):   # the ingest thread, periodically
        send the command {"cmd": "replay", "from": first, "to": last} to node
    replayer.on_ack(node, ack)                                # the node's acknowledgement

A gap is asked for once it is `after_s` old (younger ones fill by themselves: a redelivery, a
message overtaken by a later one), then again every `RETRY_S` up to `ATTEMPTS` times: a node
asleep gets the command at its next wake, and one asked while its link was down gets a second
chance. A node that answers that its oldest kept seq is past the gap has lost it for good: no
more asks. A gap the node never had readings for (a power cut skips up to 63 seqs) is asked for
`ATTEMPTS` times and then left: the node sends nothing for it.

The state is in memory: after a restart the gateway asks again, which costs the node a resend
the dedup drops.
"""

from __future__ import annotations

from typing import Any, Iterable

RETRY_S = 300.0
ATTEMPTS = 3
MAX_RANGE = 4096  # seqs asked in one command (a larger gap: its first MAX_RANGE)


class Replayer:
    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        # (node, first) -> [last, first noticed, last asked (None: never), asks]
        self._gaps: dict[tuple[str, int], list[Any]] = {}

    def __repr__(self) -> str:
        return f"Replayer(after_s={self.after_s}, gaps={len(self._gaps)})"

    def due(self, gaps: Iterable[tuple[str, int, int]], now: float) -> list[tuple[str, int, int]]:
        """The (node, first, last) ranges to ask for now, out of the outbox's current gaps."""
        current = {}
        out = []
        for node, first, last in gaps:
            key = (node, first)
            st = self._gaps.get(key)
            if st is None or st[0] != last:  # new, or narrowed from above
                st = [last, now if st is None else st[1], None if st is None else st[2],
                      0 if st is None else st[3]]
            current[key] = st
            if st[3] >= ATTEMPTS or now - st[1] < self.after_s:
                continue
            if st[2] is not None and now - st[2] < RETRY_S:
                continue
            st[2] = now
            st[3] += 1
            out.append((node, first, min(last, first + MAX_RANGE - 1)))
        self._gaps = current  # closed gaps are forgotten
        return out

    def on_ack(self, node: str, ack: dict[str, Any]) -> None:
        """A node's answer to `replay`: `kept` is its oldest seq on flash; gaps below it are
        gone from the node, and are not asked again."""
        if ack.get("cmd") != "replay" or not ack.get("ok"):
            return
        kept = ack.get("kept")
        for (n, _first), st in self._gaps.items():
            if n == node and (kept is None or (type(kept) is int and st[0] < kept)):
                st[3] = ATTEMPTS
