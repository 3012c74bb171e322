"""`make bench`: what a large fleet costs the gateway, against a small one in the same run.

1. Ingest with a backlog from 10 000 distinct node ids, as a ratio of ingest from 10 nodes:
   the ingest thread's work (`Ingestor.handle_batch` in batches of 256, and its periodic
   check every second) on 163 840 reading messages, each node seen once before the clock
   starts (a backlog after a restart: the nodes are known), and at the end the registry's
   journal written into the node rows (the gateway does it every 5 s; a run lasts about 4).
   Five rounds, alternating; the median of the rounds' ratios. Target: >= 0.9.
2. The gateway's memory (RSS) with 10 000 and 100 000 distinct node ids, each having sent
   two readings, in a process of its own each (the outbox, the registry's cache of every
   node, the topic cache): total and per node over an idle gateway. Target: <= 50 MB at
   10 000.

    .venv/bin/python tests/bench/bench_fleet.py [ingest] [memory]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cbor2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.ingest import Message  # noqa: E402
from gateway.logfmt import configure_logging  # noqa: E402

T0 = 1796428800
MESSAGES = 163_840  # about 4 s a run: the journal is written into the rows once, as every 5 s
BATCH = 256
ROUNDS = 5
PARTS = ("ingest", "memory")


def payload(seq: int, t: int) -> bytes:
    return cbor2.dumps([1, seq, t, {1: 2153, 2: 4523, 3: 101325, 7: 3712}, {0: 60, 1: 3}])


def stream(nodes: int, messages: int, first_seq: int = 0) -> list[list[Message]]:
    seqs = [first_seq] * nodes
    out = []
    for b in range(messages // BATCH):
        msgs = []
        for i in range(BATCH):
            n = (b * BATCH + i) % nodes
            msgs.append(Message(f"m/n{n}/r", payload(seqs[n], T0 + 120 * seqs[n]),
                                received_at=T0 + 120 * seqs[n] + 1))
            seqs[n] += 2
        out.append(msgs)
    return out


def ingest_rate(work: Path, nodes: int) -> float:
    gw = Gateway(parse_config({"sinks": {"file": {}}, "api": {"enabled": False}},
                              base_dir=work))
    gw.open_storage()
    warm = nodes // BATCH + 1  # batches that show every node once: known, as after a restart
    whole = stream(nodes, (warm * BATCH) + MESSAGES)  # each node's seqs without a gap
    for msgs in whole[:warm]:
        gw.ingestor.handle_batch(msgs)
    with gw.box.transaction():
        gw.ingestor.registry.compact()
    backlog = whole[warm:]
    t = time.perf_counter()
    periodic = time.monotonic() + 1.0
    for msgs in backlog:
        gw.ingestor.handle_batch(msgs)
        if time.monotonic() >= periodic:  # as the daemon's ingest loop does
            periodic += 1.0
            gw.ingestor.periodic(T0)
    with gw.box.transaction():  # the journal into the rows: at most once per run, counted
        gw.ingestor.registry.compact()
    rate = MESSAGES / (time.perf_counter() - t)
    gw.box.close()
    return rate


def ingest() -> None:
    small, large, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for r in range(ROUNDS):
            s = ingest_rate(Path(tmp) / f"small{r}", 10)
            b = ingest_rate(Path(tmp) / f"large{r}", 10_000)
            small.append(s)
            large.append(b)
            ratios.append(b / s)
    print(f"ingest with a backlog ({MESSAGES} messages, handle_batch of {BATCH} and the periodic "
          f"check, median of {ROUNDS} rounds):")
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
    node sent two readings} as JSON."""
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
    print(json.dumps({"idle": idle, "full": rss()}))


def memory() -> None:
    print("gateway memory (RSS) with distinct node ids, each having sent two readings:")
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
                  + ("   (target <= 50 MB)" if n == 10_000 else ""))


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
