"""`make bench`: how soon the `mqtt` sink delivers after its upstream broker comes back, against
a baseline measured in the same run: the same sink waiting out its backoff.

The scenario of the field trial: the upstream broker (a real Mosquitto) is down for
`OUTAGE_S` seconds while readings wait in the outbox; the sink's worker (gateway.batcher,
default backoff: 1 s doubling to 300 s, with jitter) keeps failing. Then the broker comes
back, and the figure is the time from its return to the upstream broker's acknowledgement of
every waiting reading (the outbox empty for the sink).

- meterlink: the sink reconnects at most 4 s apart and, once connected, tells the batcher to
  stop waiting (`resume`);
- baseline: the same worker and sink with the reconnect cap of 30 s and no `resume` (how the
  sink worked before), so delivery waits for the next backoff retry.

    .venv/bin/python tests/bench/bench_sink_recovery.py [OUTAGE_S]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.batcher import SinkWorker  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.sinks import make_sink  # noqa: E402
from gateway.stats import Stats  # noqa: E402
from host_tools.broker import Mosquitto  # noqa: E402

OUTAGE_S = 60.0


def recovery_s(work: Path, outage: float, *, baseline: bool) -> float:
    """Seconds from the upstream's return to every waiting reading acknowledged there."""
    work.mkdir(parents=True)
    upstream = Mosquitto(work / "upstream")
    config = parse_config({"sinks": {"mqtt": {"host": upstream.host, "port": upstream.port,
                                              "topic_prefix": "city",
                                              "batch_max_age_s": 0}}},
                          base_dir=work).sinks[0]
    box = Outbox(work / "o.db", sinks=["mqtt"])
    sink = make_sink(config)
    worker = SinkWorker(sink, config, work / "o.db", Stats())
    worker.start()
    if baseline:
        sink.resume = lambda: None
        sink.client.reconnect_delay_set(1, 30)
    try:
        t0 = int(time.time())
        with box.transaction():
            for seq in range(10):
                box.add_item("reading", "w1", seq, [{"n": "w1:water_volume", "u": "m3",
                                                     "v": 1.5 + seq, "t": t0 + seq}], t0)
        worker.wake()
        time.sleep(outage)  # the upstream is down: every attempt fails, the backoff grows
        upstream.start()
        back = time.monotonic()
        deadline = back + outage + 330
        while box.backlog("mqtt")[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        if box.backlog("mqtt")[0]:
            raise SystemExit(f"nothing delivered {outage + 330:.0f} s after the return")
        return time.monotonic() - back
    finally:
        worker.stop()
        box.close()
        upstream.stop()


def main() -> None:
    logging.getLogger("meterlink").setLevel(logging.ERROR)  # batch_failed, once per retry
    outage = float(sys.argv[1]) if len(sys.argv) > 1 else OUTAGE_S
    with tempfile.TemporaryDirectory() as tmp:
        ours = recovery_s(Path(tmp) / "ours", outage, baseline=False)
        base = recovery_s(Path(tmp) / "base", outage, baseline=True)
    print(f"mqtt sink after a {outage:g} s upstream outage: the waiting readings acknowledged "
          f"upstream {ours:.2f} s after its return (target: under 5 s)")
    print(f"  baseline (reconnect cap 30 s, waiting out the backoff): {base:.2f} s "
          f"-> {base / max(ours, 1e-3):.1f}x faster")


if __name__ == "__main__":
    main()
