"""Readings from a NATS JetStream stream, for the clustered deployment (docs/gateway.md, "Past
one machine"): the nodes publish `r` over MQTT to any server of a NATS cluster, the servers
keep the messages in a stream replicated on three of them (subjects `{prefix}.*.r`, what an
MQTT topic `m/<node>/r` becomes), and every gateway instance reads it through one durable pull
consumer: a work queue, each message to one instance.

    source = JetStreamSource(config.jetstream, "m", deliver=inbox.extend, clock=time.time,
                             stats=stats)
    source.start()                 # its own thread and asyncio loop (nats-py)
    source.ack(messages)           # after the outbox transaction holding them committed
    source.stop()

Delivery is the MQTT path's: a fetched message becomes an ingest `Message` (topic `m/<node>/r`,
`mid` a negative token that names it here) and is acknowledged to JetStream only after the
outbox committed it. A message not acknowledged within the consumer's `ack_wait_s` (this
instance died, or was cut off) is delivered again, to this instance or another; the outbox's
dedup by (node, seq) keeps one. At most `MAX_UNACKED` messages are out at once, so a slow
outbox never lets them run past `ack_wait_s` in the inbox.

Several instances (`instances` above 1) tell each other what they took (gateway/seen.py): the
batch's summary (those of the batches committed within `SEEN_FLUSH_S`, as one) is published
to the `{stream}_SEEN` stream before its readings are acknowledged, and the other instances' summaries come in through this instance's own durable
consumer of that stream (`{durable}-seen-{instance}`) as `$seen/<instance>` messages,
acknowledged after the commit like readings. An idle instance publishes an empty summary every
`HEARTBEAT_S`, so the others know it is up (`asks_replays`).

Why a thread with its own loop: the gateway's ingest, sinks and paho are threads; nats-py is
asyncio only. The loop is private to this module: fetch, ack and reconnect run there, and
`ack` hands it the tokens with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import nats
import nats.errors
from nats.js.errors import NotFoundError

from gateway.config import JetStreamConfig
from gateway.ingest import Message
from gateway.logfmt import kv
from gateway.seen import Took, asker

log = logging.getLogger("meterlink.gateway.jetstream")

FETCH = 256  # messages a pull asks for
MAX_UNACKED = 2048  # fetched, not yet acknowledged: past it, no pull until acks come back
PULL_WAIT_S = 1.0  # how long a pull waits for messages when the stream is empty
SEEN_MAX_AGE_S = 86400  # summaries kept: an instance down for up to a day catches up
HEARTBEAT_S = 15.0  # an idle instance's empty summary, this often
LIVE_S = 60.0  # an instance not heard from for this long no longer asks for gaps
EMPTY = b"\xa0"  # the empty summary (a CBOR empty map)
SEEN_FLUSH_S = 0.1  # batches committed within this go out as one summary
SEEN_WAIT_S = 5.0  # the longest a batch's acknowledgement waits for its summary
SEEN_MAX_BYTES = 1 << 30  # the summaries stream's bound (the oldest go first)
# A server cut from the rest of its cluster stays up without a JetStream quorum and does not
# tell its clients: when no reading came for QUORUM_PROBE_S, the readings stream is asked
# for its state, and after QUORUM_MISSES asks in a row without an answer or with no leader
# in it (the cut server answers from what it last knew) the instance moves to the next
# server of its list (`_quorum_watch`): 20-30 s after the cut.
QUORUM_PROBE_S = 10.0
QUORUM_MISSES = 2


async def ensure_stream(nc: Any, *, stream: str, subjects: list[str], replicas: int) -> None:
    """The readings stream on a connected nats-py client: file storage, `replicas` copies,
    work-queue retention (a message leaves once acknowledged). An existing one is kept."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=stream, subjects=subjects,
                                         retention=RetentionPolicy.WORK_QUEUE,
                                         storage=StorageType.FILE, num_replicas=replicas))


class JetStreamSource:
    def __init__(self, cfg: JetStreamConfig, prefix: str, *,
                 deliver: Callable[[list[Message]], None], clock: Callable[[], float],
                 stats: Any) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.deliver = deliver
        self.clock = clock
        self.stats = stats
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._stopping = False
        self._unacked: dict[int, Any] = {}  # token -> nats Msg
        self._next = 0
        self._room = threading.Event()
        self._room.set()
        self.instance = cfg.instance or ""
        self.seen_subject = f"meterlink.seen.{cfg.stream}.{self.instance}"
        self._published_at = 0.0  # monotonic time of this instance's last summary
        self.heard: dict[str, float] = {}  # instance -> monotonic time of its last summary
        self.js: Any = None  # the nats-py JetStream context, on the source's thread
        self._held: list[tuple[Took, list[Any]]] = []  # committed, summary not yet published
        self._fetched_at = 0.0  # monotonic time of the last fetch that brought readings

    def __repr__(self) -> str:
        return (f"JetStreamSource(servers={len(self.cfg.servers)}, stream={self.cfg.stream!r}, "
                f"durable={self.cfg.durable!r}, unacked={len(self._unacked)})")

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="jetstream", daemon=True)
        self.thread.start()

    def request_stop(self) -> None:
        """No more pulls (the acknowledgements of what is in hand still go out)."""
        self._stopping = True
        self._room.set()

    def stop(self) -> None:
        """Stops pulling, drains the connection (queued acknowledgements go out), joins."""
        self.request_stop()
        if self.thread is not None:
            self.thread.join(10)

    def ack(self, batch: Sequence[Message], took: Took | None = None) -> None:
        """Acknowledges the JetStream messages of a committed batch (mid < 0), after
        publishing `took`, the seqs it took, when there are any (the source's own from then
        on: the ingest makes a new one per batch)."""
        tokens = [-m.mid for m in batch if m.mid < 0]
        if tokens and self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self._ack_now, tokens, took)
            except RuntimeError:  # stopped: not acknowledged, so delivered again (dedup)
                pass

    def asks_replays(self) -> bool:
        """Whether this instance is the one that asks nodes for their gaps (gateway/seen.py)."""
        return not self.cfg.exchanges_seen or asker(self.instance, self.heard,
                                                    time.monotonic(), LIVE_S)

    # ---- the source's own thread ------------------------------------------------------------

    def _ack_now(self, tokens: list[int], took: Took | None = None) -> None:
        msgs = [m for m in map(self._unacked.pop, tokens, [None] * len(tokens))
                if m is not None]
        if took:
            # one summary for the batches of SEEN_FLUSH_S: a trickle of readings (a batch
            # a message) would otherwise double the cluster's messages
            self._held.append((took, msgs))
            if len(self._held) == 1:
                self.loop.call_later(SEEN_FLUSH_S, self._flush_seen)
        else:
            for msg in msgs:
                self.loop.create_task(self._ack_one(msg))
        if len(self._unacked) < MAX_UNACKED:
            self._room.set()

    def _flush_seen(self) -> asyncio.Task | None:
        held, self._held = self._held, []
        if not held:
            return None
        merged = Took()
        for took, _msgs in held:
            merged.merge(took)
        return self.loop.create_task(self._publish_then_ack(
            merged.payload(), [m for _t, msgs in held for m in msgs]))

    async def _publish_then_ack(self, summary: bytes, msgs: list[Any]) -> None:
        """The summary first, confirmed by the stream: an instance that dies before it has
        not acknowledged the readings either (gateway/seen.py). A summaries stream that takes
        nothing for SEEN_WAIT_S (no leader: an election, a partition) does not hold the
        readings back: they are acknowledged, and the summary goes out once it can (the
        other instances show those seqs as missing meanwhile)."""
        publish = asyncio.ensure_future(self._publish_seen(summary))
        done, _ = await asyncio.wait([publish], timeout=SEEN_WAIT_S)
        if done and not publish.result():
            return  # stopping: not acknowledged, so delivered again (dedup)
        if not done:
            self.stats.add(seen_late=1)
        for msg in msgs:
            await self._ack_one(msg)

    async def _publish_seen(self, payload: bytes) -> bool:
        """Publishes a summary, again every second until the stream takes it (a heartbeat:
        once). False: not published (stopping)."""
        while True:
            try:
                await self.js.publish(self.seen_subject, payload, timeout=2)
                self._published_at = time.monotonic()
                return True
            except Exception as exc:  # noqa: BLE001 - no stream leader for now: again
                log.warning("seen_publish_failed", extra=kv(
                    error=str(exc) or type(exc).__name__,
                    retry="at the next heartbeat" if payload is EMPTY else "in 1 s"))
                if self._stopping or payload is EMPTY:
                    return False
                await asyncio.sleep(1)

    async def _quorum_watch(self, nc: Any) -> None:
        """Moves to the next server when this one has lost its cluster (see QUORUM_PROBE_S).
        nats-py has no call for that; it switches servers itself when a connection goes
        stale, and `_process_op_err` is how it does it (nats-py is pinned in make setup)."""
        misses = 0
        while not self._stopping:
            await asyncio.sleep(QUORUM_PROBE_S)
            if time.monotonic() - self._fetched_at < QUORUM_PROBE_S or not nc.is_connected:
                misses = 0
                continue
            try:
                info = await asyncio.wait_for(self.js.stream_info(self.cfg.stream),
                                              QUORUM_PROBE_S / 2)
                if info.cluster is None or info.cluster.leader:
                    misses = 0
                    continue
                # a server cut off answers from what it last knew: the stream, no leader
                misses += 1
                error = "the readings stream has no leader here"
            except NotFoundError:  # an answer: the cluster is there (the pull makes the stream)
                misses = 0
                continue
            except Exception as exc:  # noqa: BLE001 - no answer: no quorum here either
                misses += 1
                error = str(exc) or type(exc).__name__
            if misses >= QUORUM_MISSES and not self._stopping:
                misses = 0
                log.warning("jetstream_no_quorum", extra=kv(
                    server=str(nc.connected_url.netloc), error=error,
                    action="connect to the next server"))
                await nc._process_op_err(nats.errors.StaleConnectionError())

    async def _pull(self, stream: str, subject: str, durable: str, config: Any,
                    prepare: Callable[[], Awaitable[None]], size: int, *,
                    subscribed: Callable[[], None] = lambda: None
                    ) -> AsyncIterator[list[Any]]:
        """Subscribes the durable pull consumer `durable` to `subject` on `stream` (`prepare`
        first: making the stream), again every second while the cluster cannot answer (an
        election), and calls `subscribed`; then yields each fetch of up to `size` messages,
        and [] when none came within PULL_WAIT_S, until the source stops."""
        sub = None
        while sub is None:
            if self._stopping:
                return
            try:
                await prepare()
                sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream,
                                                   config=config)
            except Exception as exc:  # noqa: BLE001 - the cluster is electing: try again
                log.warning("jetstream_subscribe_failed", extra=kv(
                    stream=stream, error=str(exc) or type(exc).__name__, retry="in 1 s"))
                await asyncio.sleep(1)
        subscribed()
        log.info("jetstream_subscribed", extra=kv(stream=stream, durable=durable,
                                                  subject=subject))
        while not self._stopping:
            try:
                yield await sub.fetch(size, timeout=PULL_WAIT_S)
            except nats.errors.TimeoutError:
                yield []
            except Exception as exc:  # noqa: BLE001 - a server went away: the client reconnects
                log.warning("jetstream_fetch_failed", extra=kv(
                    stream=stream, error=str(exc) or type(exc).__name__))
                await asyncio.sleep(0.5)

    async def _seen_loop(self) -> None:
        """The other instances' summaries into the inbox; this one's and empty ones are
        acknowledged at once. An idle instance publishes an empty one every HEARTBEAT_S."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, \
            StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        cfg = self.cfg
        stream = f"{cfg.stream}_SEEN"
        subject = f"meterlink.seen.{cfg.stream}.*"

        async def make_stream() -> None:
            try:
                await self.js.stream_info(stream)
            except NotFoundError:
                await self.js.add_stream(StreamConfig(
                    name=stream, subjects=[subject], storage=StorageType.FILE,
                    num_replicas=cfg.replicas, max_age=SEEN_MAX_AGE_S,
                    max_bytes=SEEN_MAX_BYTES, discard=DiscardPolicy.OLD))

        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                ack_wait=cfg.ack_wait_s, max_ack_pending=4096)
        async for msgs in self._pull(stream, subject, f"{cfg.durable}-seen-{self.instance}",
                                     config, make_stream, 64):
            now = self.clock()
            out = []
            for msg in msgs:
                name = msg.subject.rsplit(".", 1)[-1]
                self.heard[name] = time.monotonic()
                if name == self.instance or msg.data == EMPTY:
                    self.loop.create_task(self._ack_one(msg))
                    continue
                self._next += 1
                self._unacked[self._next] = msg
                out.append(Message(f"$seen/{name}", msg.data, -self._next, 1, now))
            if out:
                self.deliver(out)
            if time.monotonic() - self._published_at >= HEARTBEAT_S:
                self._published_at = time.monotonic()  # one heartbeat in flight at a time
                self.loop.create_task(self._publish_seen(EMPTY))

    async def _ack_one(self, msg: Any) -> None:
        try:
            await msg.ack()
        except Exception as exc:  # noqa: BLE001 - the connection is gone: JetStream redelivers
            log.warning("jetstream_ack_failed", extra=kv(error=str(exc) or type(exc).__name__,
                                                         action="redelivered after ack_wait"))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._consume())
        finally:
            self.loop.close()

    async def _consume(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        cfg = self.cfg
        subject = f"{self.prefix}.*.r"

        async def on_disconnect():
            self.stats.set_state(subscribed=False)
            log.warning("jetstream_disconnected", extra=kv(reconnect="automatic"))

        async def on_reconnect():
            log.info("jetstream_reconnected", extra=kv(server=str(nc.connected_url.netloc)))

        async def on_error(exc):
            log.warning("jetstream_error", extra=kv(error=str(exc) or type(exc).__name__))

        while not self._stopping:
            try:
                # the servers in the order listed, not shuffled: an operator places each
                # instance (docs/gateway.md, "Several instances on JetStream")
                nc = await nats.connect(servers=list(cfg.servers), user=cfg.user,
                                        password=cfg.password, max_reconnect_attempts=-1,
                                        reconnect_time_wait=1, connect_timeout=5,
                                        disconnected_cb=on_disconnect,
                                        reconnected_cb=on_reconnect, error_cb=on_error,
                                        allow_reconnect=True, dont_randomize=True)
                log.info("jetstream_connected", extra=kv(server=str(nc.connected_url.netloc)))
                break
            except Exception as exc:  # noqa: BLE001 - no server reachable yet: try again
                log.warning("jetstream_connect_failed", extra=kv(
                    servers=",".join(cfg.servers), error=str(exc) or type(exc).__name__,
                    reconnect="in 2 s"))
                await asyncio.sleep(2)
        else:
            return
        self.js = nc.jetstream()
        seen = self.loop.create_task(self._seen_loop()) if cfg.exchanges_seen else None
        watch = self.loop.create_task(self._quorum_watch(nc))

        async def make_stream() -> None:
            await ensure_stream(nc, stream=cfg.stream, subjects=[subject], replicas=cfg.replicas)

        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait_s,
                                max_ack_pending=4 * MAX_UNACKED)

        def subscribed() -> None:
            self.stats.set_state(connected=True, subscribed=True)

        async for msgs in self._pull(cfg.stream, subject, cfg.durable, config, make_stream,
                                     FETCH, subscribed=subscribed):
            if msgs:
                self._fetched_at = time.monotonic()
                self.stats.set_state(connected=True, subscribed=True)
            now = self.clock()
            out = []
            for msg in msgs:
                self._next += 1
                self._unacked[self._next] = msg
                meta = msg.metadata
                if meta.num_delivered > 1:
                    self.stats.add(jetstream_redelivered=1)
                out.append(Message(msg.subject.replace(".", "/"), msg.data, -self._next, 1,
                                   now))
            if out:
                self.deliver(out)
            while len(self._unacked) >= MAX_UNACKED and not self._stopping:
                self._room.clear()
                await self.loop.run_in_executor(None, self._room.wait, 1.0)
        watch.cancel()
        if seen is not None:
            await asyncio.wait([seen], timeout=PULL_WAIT_S + 1)
        last = self._flush_seen()  # a clean stop leaves nothing to deliver again
        if last is not None:
            await asyncio.wait([last], timeout=3)
        await nc.drain()
