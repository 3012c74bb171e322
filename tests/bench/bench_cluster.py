"""`make bench`: the gateway's throughput on the clustered deployment (docs/gateway.md, "Past
one machine"), one and two instances, against a bare JetStream consumer measured in the same run.

Three `nats-server` processes on loopback ports (host_tools/nats.py: clustered, JetStream with
three replicas). Each run starts with a backlog of N reading messages in the `READINGS` stream
(subjects `m.<node>.r`, what the nodes' MQTT publishes become; real `r` payloads, 100 nodes,
each node's seqs consecutive), published straight into JetStream so that filling is not timed.
Then the consumers start and the stream is watched: with work-queue retention a message leaves
it when a consumer acknowledged it, so the rate is the messages acknowledged from the first
acknowledgement to an empty stream (the consumers' start is not timed).

- **bare**: one child process with nats-py, a durable pull consumer, fetching 256 at a time and
  acknowledging each message; it stores nothing.
- **gateway x1 / x2**: one or two `meterlink gateway` processes with `[jetstream]` on the same
  durable (the deployment's work queue) and their file sink running; a message is acknowledged
  only after the outbox transaction holding it committed. The two are configured as the
  deployment is (`instances = 2`, each its `instance` name): each batch's summary of the seqs
  it took is published to the other before its messages are acknowledged (gateway/seen.py).

Three rounds, each bare, x1, x2 in turn; the ratios are the medians of the rounds' ratios.

    .venv/bin/python tests/bench/bench_cluster.py [MESSAGES]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "bench")]

from bench_gateway import RECORDS_PER_MESSAGE, payload  # noqa: E402
from gateway_support import GatewayProcess  # noqa: E402
from host_tools.nats import NatsCluster  # noqa: E402

MESSAGES = 20_000
NODES = 100
ROUNDS = 3
STREAM = "READINGS"
DURABLE = "meterlink-gateway"


async def _fill(url: str, n: int) -> None:
    import nats

    from gateway.jetstream import ensure_stream

    nc = await nats.connect(url)
    await ensure_stream(nc, stream=STREAM, subjects=["m.*.r"], replicas=3)
    js = nc.jetstream()
    for start in range(0, n, 500):
        await asyncio.gather(*(
            js.publish(f"m.b{i % NODES}.r", payload(i // NODES * RECORDS_PER_MESSAGE))
            for i in range(start, min(n, start + 500))))
    await nc.close()


async def _forget_consumers(url: str) -> None:
    """Removes every consumer of the stream (a work-queue stream takes one per subject), so
    that the next run starts from its own new durable."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for info in await js.consumers_info(STREAM):
        await js.delete_consumer(STREAM, info.name)
    await nc.close()


async def _left(nc) -> int:
    return (await nc.jetstream().stream_info(STREAM)).state.messages


def drain_rate(cluster: NatsCluster, start, n: int, timeout: float = 300.0) -> float:
    """Fills the stream with n messages, calls `start()` (the consumers), and returns the
    messages acknowledged a second from the first acknowledgement to an empty stream;
    `start` returns a function that stops what it started."""
    asyncio.run(_forget_consumers(auth_url(cluster)))
    asyncio.run(_fill(auth_url(cluster), n))

    async def watch():
        import nats

        nc = await nats.connect(auth_url(cluster))
        if await _left(nc) != n:
            raise RuntimeError(f"the stream holds {await _left(nc)} messages, not {n}")
        stopper = start()
        try:
            deadline = time.monotonic() + timeout
            first = None
            while True:
                left = await _left(nc)
                now = time.perf_counter()
                if first is None and left < n:
                    first = (now, left)
                if left == 0:
                    return first[1] / (now - first[0])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{left} of {n} messages still in the stream after "
                                       f"{timeout:.0f} s")
                await asyncio.sleep(0.02)
        finally:
            stopper()
            await nc.close()

    return asyncio.run(watch())


def bare_consumer_child(url: str) -> None:
    """The baseline: nats-py, one durable pull consumer, fetch 256, acknowledge each."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    async def run():
        nc = await nats.connect(url)
        sub = await nc.jetstream().pull_subscribe(
            "m.*.r", durable="bench-bare", stream=STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=8192))
        while True:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()

    asyncio.run(run())


def auth_url(cluster: NatsCluster) -> str:
    """Server 1's URL with the gateway user's credentials in it (nats-py reads them there)."""
    return cluster.urls[0].replace("nats://", f"nats://{cluster.gateway_user}:"
                                              f"{cluster.gateway_password}@")


def start_bare(cluster: NatsCluster):
    proc = subprocess.Popen([sys.executable, __file__, "--bare-consumer", auth_url(cluster)])
    return lambda: (proc.kill(), proc.wait())


def start_gateways(cluster: NatsCluster, work: Path, count: int):
    gws = []
    for i in range(count):
        host, port = cluster.mqtt[i]
        # each instance's own server first, as docs/gateway.md advises (tried in that order):
        # one instance reads through server 1, as the bare consumer does
        servers = cluster.urls[i:] + cluster.urls[:i]
        gws.append(GatewayProcess(
            work / f"gw-{i}", SimpleNamespace(host=host, port=port), client_id=f"bench-gw-{i}",
            mqtt_extra=f'username = "{cluster.gateway_user}"\n'
                       f'password = "{cluster.gateway_password}"\n',
            extra=f"[jetstream]\nservers = {json.dumps(servers)}\n"
                  f'user = "{cluster.gateway_user}"\npassword = "{cluster.gateway_password}"\n'
                  f'durable = "{DURABLE}"\n'
                  + (f'instances = {count}\ninstance = "gw-{i}"\n' if count > 1 else "")))

    def stop():
        for gw in gws:
            gw.stop()
    return stop


def main(argv: list[str]) -> int:
    if argv[:1] == ["--bare-consumer"]:
        bare_consumer_child(argv[1])
        return 0
    n = int(argv[0]) if argv else MESSAGES
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster = NatsCluster(work / "nats", size=3).start(60)
    rows = []
    try:
        for r in range(ROUNDS):
            bare = drain_rate(cluster, lambda: start_bare(cluster), n)
            one = drain_rate(cluster, lambda: start_gateways(cluster, work / f"r{r}-x1", 1), n)
            two = drain_rate(cluster, lambda: start_gateways(cluster, work / f"r{r}-x2", 2), n)
            rows.append((bare, one, two))
            print(f"round {r + 1}: bare consumer {bare:,.0f} msg/s, gateway x1 {one:,.0f} "
                  f"msg/s ({one / bare:.2f}), gateway x2 {two:,.0f} msg/s ({two / bare:.2f})",
                  flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    x1 = statistics.median(o / b for b, o, _ in rows)
    x2 = statistics.median(t / b for b, _, t in rows)
    print(f"cluster throughput, {n:,} messages ({n * RECORDS_PER_MESSAGE:,} readings) from a "
          f"backlog on three nats-server (R3): gateway x1 = {x1:.2f} of a bare JetStream "
          f"consumer, x2 = {x2:.2f} (medians of {ROUNDS} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
