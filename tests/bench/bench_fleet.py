"""`make bench`: what a large fleet costs the gateway, against a small one in the same run.

1. Ingest with a backlog from 10 000 distinct node ids, as a ratio of ingest from 10 nodes:
   the ingest thread's work (`Ingestor.handle_batch` in batches of 256, its periodic check
   every second, which writes the registry's journal into the node rows every 5 s, and that
   once more at the end) on reading messages, each node seen once before the clock starts (a
   backlog after a restart: the nodes are known). The two gateways run in one process and
   take turns of 16 batches, each timed on its own and keeping its own 5 s (`OwnClock`), so
   that the machine's slow seconds (a shared CPU) fall on both alike; a round lasts until the
   10-node gateway has run 10 s (two of the journal's periods, the same number of messages
   for both); three rounds, each from a collected heap (the last round's gateways freed),
   the median of the rounds' ratios. Target: >= 0.9.
2. The gateway's memory (RSS) with 10 000 and 100 000 distinct node ids, each having sent
   two readings, in a process of its own each (the outbox, the registry's cache of every
   node, the topic cache): total and per node over an idle gateway. Target: <= 50 MB at
   10 000. And how long writing the registry's journal into the rows of all those nodes
   takes (a compaction, gateway/registry.py), which sets how often it runs.

    .venv/bin/python tests/bench/bench_fleet.py [ingest] [memory]
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import cbor2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import gateway.registry  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.ingest import Message  # noqa: E402
from gateway.logfmt import configure_logging  # noqa: E402

T0 = 1796428800
RUN_S = 10.0  # two of the journal's 5 s periods (gateway/registry.py COMPACT_S)
BATCH = 256
ROUNDS = 3
TURN = 16  # batches a gateway runs in a turn (about 80 ms): the other's data out of the caches
#            costs the first batch of a turn only
PARTS = ("ingest", "memory")


def payload(seq: int, t: int) -> bytes:
    return cbor2.dumps([1, seq, t, {1: 2153, 2: 4523, 3: 101325, 7: 3712}, {0: 60, 1: 3}])


def batches(nodes: int, first_seq: int = 0) -> Iterator[list[Message]]:
    """Batches of BATCH reading messages from `nodes` node ids in turn, each node's seqs
    without a gap (2 apart: a message holds two records), for ever."""
    seqs = [first_seq] * nodes
    n = 0
    while True:
        msgs = []
        for _ in range(BATCH):
            msgs.append(Message(f"m/n{n}/r", payload(seqs[n], T0 + 120 * seqs[n]),
                                received_at=T0 + 120 * seqs[n] + 1))
            seqs[n] += 2
            n = (n + 1) % nodes
        yield msgs


def stream(nodes: int, messages: int, first_seq: int = 0) -> list[list[Message]]:
    return list(itertools.islice(batches(nodes, first_seq), messages // BATCH))


class OwnClock:
    """`time.monotonic` for gateway/registry.py (when its journal is due to be written into
    the rows, every 5 s) counting the running gateway's own turns only, as if it ran alone."""

    def __init__(self) -> None:
        self.run: Run | None = None

    def monotonic(self) -> float:
        return time.monotonic() - (self.run.paused if self.run is not None else 0.0)


CLOCK = OwnClock()


class Run:
    """One gateway ingesting a backlog from `nodes` node ids, timed batch by batch."""

    def __init__(self, work: Path, nodes: int) -> None:
        self.gw = Gateway(parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                                       base_dir=work))
        self.gw.open_storage()
        self.backlog = batches(nodes)
        ingestor = self.gw.ingestor
        for _ in range(nodes // BATCH + 1):  # every node once: known, as after a restart
            ingestor.handle_batch(next(self.backlog))
        with self.gw.box.transaction():
            ingestor.registry.compact()
        self.messages = 0
        self.elapsed = 0.0
        self.periodic = 1.0
        self.paused = 0.0  # time spent outside this gateway's turns
        self.left = time.monotonic()

    def turn(self) -> None:
        """TURN batches, each with the periodic check when a second of this run's time passed
        (as the daemon's ingest loop does)."""
        work = [next(self.backlog) for _ in range(TURN)]
        self.paused += time.monotonic() - self.left
        CLOCK.run = self
        ingestor = self.gw.ingestor
        for msgs in work:
            t = time.perf_counter()
            ingestor.handle_batch(msgs)
            if self.elapsed + time.perf_counter() - t >= self.periodic:
                self.periodic += 1.0
                ingestor.periodic(T0)
            self.elapsed += time.perf_counter() - t
            self.messages += len(msgs)
        CLOCK.run = None
        self.left = time.monotonic()

    def finish(self) -> float:
        """The journal written into the rows (counted); the rate."""
        t = time.perf_counter()
        with self.gw.box.transaction():
            self.gw.ingestor.registry.compact()
        self.elapsed += time.perf_counter() - t
        self.gw.box.close()
        return self.messages / self.elapsed


def ingest_pair(work: Path) -> tuple[float, float, int]:
    """Ingest rates from 10 and from 10 000 nodes, the two gateways taking turns of TURN
    batches until the first has run RUN_S (a slow second of the machine slows both, not the
    one that happened to run then); and how many messages each took."""
    registry_time, gateway.registry.time = gateway.registry.time, CLOCK
    try:
        small, large = Run(work / "small", 10), Run(work / "large", 10_000)
        while small.elapsed < RUN_S:
            small.turn()
            large.turn()
        return small.finish(), large.finish(), small.messages
    finally:
        gateway.registry.time = registry_time


def ingest() -> None:
    small, large, ratios, messages = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for r in range(ROUNDS):
            # the last round's gateways are garbage (cycles): collected now, not by a full
            # collection in the middle of this round, with this round's large fleet
            # allocated around them
            gc.collect()
            s, b, n = ingest_pair(Path(tmp) / f"round{r}")
            small.append(s)
            large.append(b)
            ratios.append(b / s)
            messages.append(n)
    print(f"ingest with a backlog (handle_batch of {BATCH} and the periodic check, about "
          f"{statistics.median(messages)} messages a run, the two gateways taking turns of "
          f"{TURN} batches; median of {ROUNDS} rounds):")
    print(f"  from 10 nodes            {statistics.median(small):9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in small))
    print(f"  from 10 000 nodes        {statistics.median(large):9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in large))
    print(f"  ratio                    {statistics.median(ratios):9.2f}   rounds "
          + " ".join(f"{x:.2f}" for x in ratios) + "   (target >= 0.90)")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(nodes: str, work: str) -> None:
    """(A child process.) Prints {"idle": RSS of an opened gateway, "full": RSS once every
    node sent two readings, "compact": seconds to write the journal into the node rows
    after a third reading from every node} as JSON."""
    configure_logging("ERROR")
    n = int(nodes)
    gw = Gateway(parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                              base_dir=Path(work)))
    gw.open_storage()
    idle = rss()
    for first in (0, 2):
        for msgs in stream(n, (n + BATCH - 1) // BATCH * BATCH, first_seq=first):
            gw.ingestor.handle_batch(msgs)
        gw.ingestor.periodic(T0)
    full = rss()
    for msgs in stream(n, (n + BATCH - 1) // BATCH * BATCH, first_seq=4):
        gw.ingestor.handle_batch(msgs)
    t = time.perf_counter()
    with gw.box.transaction():
        gw.ingestor.registry.compact()
    print(json.dumps({"idle": idle, "full": full, "compact": time.perf_counter() - t}))


def memory() -> None:
    print("gateway memory (RSS) with distinct node ids, each having sent two readings, and "
          "the time to write the journal into the rows of every node (a compaction):")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-mem-") as tmp:
        for n in (10_000, 100_000):
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    "import bench_fleet; bench_fleet.memory_child(*sys.argv[1:])")
            work = Path(tmp) / f"m{n}"
            work.mkdir()
            out = subprocess.run([sys.executable, "-c", code, str(n), str(work)],
                                 capture_output=True, text=True, check=True).stdout
            got = json.loads(out)
            per = (got["full"] - got["idle"]) / n
            print(f"  {n:7d} nodes   RSS {got['full'] / 2**20:6.1f} MB   idle gateway "
                  f"{got['idle'] / 2**20:5.1f} MB   {per / 1024:.2f} KB per node"
                  + ("   (target <= 50 MB)" if n == 10_000 else "")
                  + f"   compaction {got['compact']:.2f} s ({got['compact'] / n * 1e6:.0f} us "
                  "a node)")


def main(argv: list[str]) -> int:
    parts = argv or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"bench_fleet: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})",
              file=sys.stderr)
        return 2
    configure_logging("ERROR")
    if "ingest" in parts:
        ingest()
    if "memory" in parts:
        memory()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
