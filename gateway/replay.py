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
chance. An ask that an awake node (online, by its last status) leaves unanswered for
`unanswered_s` (the gateway's `ack_timeout_s`) was lost on the way, as a downlink can be in
the same election as the readings, and is sent again then, up to LOST_ASKS times besides the
ATTEMPTS. A node that answers that its oldest kept seq is past the gap has lost it for good:
no more asks. A gap the node never had readings for (a power cut skips up to 63 seqs) is asked
for `ATTEMPTS` times and then left: the node sends nothing for it.

The state is in memory: after a restart the gateway asks again, which costs the node a resend
the dedup drops.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

RETRY_S = 300.0
ATTEMPTS = 3
LOST_ASKS = 5  # asks an awake node never answered, sent again sooner (not attempts)
MAX_RANGE = 4096  # seqs asked in one command (a larger gap: its first MAX_RANGE)


class _Gap:
    __slots__ = ("last", "noticed", "asked", "asks", "answered", "lost")

    def __init__(self, last: int, now: float) -> None:
        self.last = last
        self.noticed = now
        self.asked: float | None = None  # when last asked
        self.asks = 0  # attempts
        self.answered = False  # the node acknowledged the last ask
        self.lost = 0  # asks sent again because the last one was never answered


class Replayer:
    """Which gaps to ask for, and when (module docstring). `unanswered_s`: an ask an awake
    node has not acknowledged after that long is taken as lost (an election can drop a
    downlink as it drops a reading) and sent again at once, up to LOST_ASKS times, instead
    of after RETRY_S."""

    def __init__(self, after_s: float, unanswered_s: float = 60.0) -> None:
        self.after_s = after_s
        self.unanswered_s = unanswered_s
        self._gaps: dict[tuple[str, int], _Gap] = {}  # (node, first) ->

    def __repr__(self) -> str:
        return f"Replayer(after_s={self.after_s}, gaps={len(self._gaps)})"

    def due(self, gaps: Iterable[tuple[str, int, int]], now: float,
            awake: Callable[[str], bool] = lambda node: False) -> list[tuple[str, int, int]]:
        """The (node, first, last) ranges to ask for now, out of the outbox's current gaps;
        `awake(node)`: the node is online (not asleep, not gone), so it answers an ask it
        gets within seconds."""
        current = {}
        out = []
        for node, first, last in gaps:
            key = (node, first)
            st = self._gaps.get(key)
            if st is None:
                st = _Gap(last, now)
            st.last = last  # narrowed from above: what is left
            current[key] = st
            if st.asks >= ATTEMPTS or now - st.noticed < self.after_s:
                continue
            if st.asked is not None:
                lost = not st.answered and st.lost < LOST_ASKS and \
                    now - st.asked >= self.unanswered_s and awake(node)
                if lost:
                    st.lost += 1
                elif now - st.asked < RETRY_S:
                    continue
                else:
                    st.asks += 1
            else:
                st.asks += 1
            st.asked = now
            st.answered = False
            out.append((node, first, min(last, first + MAX_RANGE - 1)))
        self._gaps = current  # closed gaps are forgotten
        return out

    def on_ack(self, node: str, ack: dict[str, Any]) -> None:
        """A node's answer to `replay` (to each of its gaps asked: an answer, whatever it says).
        `kept` is its oldest seq on flash; gaps below it are gone from the node, and are not
        asked again."""
        if ack.get("cmd") != "replay":
            return
        kept = ack.get("kept")
        for (n, _first), st in self._gaps.items():
            if n != node:
                continue
            st.answered = True
            if ack.get("ok") and (kept is None or (type(kept) is int and st.last < kept)):
                st.asks = ATTEMPTS
