"""`make bench`: what 100 early-warning rules cost ingest, against ingest without rules in
the same run.

The ingest thread's work (`Ingestor.handle_batch`: decode, dedup, registry, rules, one SQLite
transaction per batch of 256) on the same 40 000 reading messages (2 records, 5 values each,
from 200 nodes), into a fresh outbox each round: once with no rules, once with 100 rules.
Five rounds, alternating, so that a host getting busier weighs on both; the ratio is the
median of the rounds' ratios. Target: ingest with the rules >= 0.9 of ingest without.

The 100 rules are a city's mix: 80 watch one node each (a threshold with a hold, a
threshold above, a rate of change, a stale channel, in turn), 15 a group of 20 nodes, and 5
every node (a stale channel, a threshold). So every message meets 5 rules, some 2-3 more:
about 9 evaluations a message. `evaluations` and the cost of one are printed too, to scale
the figure to a denser rule set.

    .venv/bin/python tests/bench/bench_rules.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.ingest import Message  # noqa: E402
from gateway.logfmt import configure_logging  # noqa: E402

from bench_fleet import stream as fleet_stream  # noqa: E402  (the same messages, from NODES)

NODES = 200
MESSAGES = 40_000
BATCH = 256
ROUNDS = 5
CHANNELS = ("temperature", "humidity", "pressure")


def rules() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i in range(80):
        kind = ("threshold", "above", "rate", "stale")[i % 4]
        rule: dict = {"kind": "threshold" if kind == "above" else kind,
                      "channel": CHANNELS[i % 3], "nodes": [f"n{i * 2 % NODES}"]}
        if kind == "threshold":
            rule.update(below=-40, hold="10m")
        elif kind == "above":
            rule.update(above=1e6)
        elif kind == "rate":
            rule.update(drop_percent=50, window="5m")
        else:
            rule.update(after="1h")
        out[f"node-{i}"] = rule
    for i in range(15):
        out[f"group-{i}"] = {"kind": "threshold", "channel": CHANNELS[i % 3],
                             "group": f"g{i % 10}", "above": 1e6}
    for i in range(5):
        out[f"all-{i}"] = ({"kind": "stale", "channel": CHANNELS[i % 3], "after": "2h"}
                           if i % 2 else {"kind": "threshold", "channel": CHANNELS[i % 3],
                                          "below": -1e6})
    return out


def rate(work: Path, with_rules: bool, stream: list[list[Message]]) -> tuple[float, int]:
    data = {"sinks": {"file": {}}, "api": {"enabled": False}}
    if with_rules:
        data["rules"] = rules()
    gw = Gateway(parse_config(data, base_dir=work))
    gw.open_storage()
    with gw.box.transaction():  # nodes in groups of 20 (the group rules' scopes)
        for n in range(NODES):
            gw.box.nodes.register(f"n{n}", board="esp32-devkitc", sensors=[], interval_s=120,
                                  group=f"g{n // 20}")
    gw.ingestor.rules.refresh_places()
    t = time.perf_counter()
    for msgs in stream:
        outcomes = gw.ingestor.handle_batch(msgs)
        assert outcomes[0] == "accepted"
    elapsed = time.perf_counter() - t
    evaluations = gw.ingestor.rules.evaluations
    gw.box.close()
    return MESSAGES / elapsed, evaluations


def main() -> int:
    configure_logging("ERROR")
    stream = fleet_stream(NODES, MESSAGES)
    bare, ruled, ratios = [], [], []
    evaluations = 0
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        for r in range(ROUNDS):
            b, _ = rate(Path(tmp) / f"bare{r}", False, stream)
            w, evaluations = rate(Path(tmp) / f"rules{r}", True, stream)
            bare.append(b)
            ruled.append(w)
            ratios.append(w / b)
    per_eval = (1 / statistics.median(ruled) - 1 / statistics.median(bare)) * MESSAGES \
        / evaluations * 1e6
    print(f"ingest with 100 early-warning rules ({MESSAGES} messages of 5 values from {NODES} "
          f"nodes, handle_batch of {BATCH}, median of {ROUNDS} rounds):")
    print(f"  without rules          {statistics.median(bare):9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in bare))
    print(f"  with 100 rules         {statistics.median(ruled):9.0f} msg/s   rounds "
          + " ".join(f"{x:.0f}" for x in ruled))
    print(f"  ratio                  {statistics.median(ratios):9.2f}   rounds "
          + " ".join(f"{x:.2f}" for x in ratios) + "   (target >= 0.90)")
    print(f"  evaluations            {evaluations / MESSAGES:9.1f} a message, "
          f"{per_eval:.2f} us each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
