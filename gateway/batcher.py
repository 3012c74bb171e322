"""The batcher: one thread per sink moving batches from the outbox to the sink.

    worker = SinkWorker(sink, sink_config, outbox_path, stats)
    worker.start(); worker.wake(); worker.stop()

A batch is cut when the sink's backlog reaches `batch_max_records` or `batch_max_bytes`, or
its oldest item is `batch_max_age_s` old. Delivery is at least once:

- delivered (the sink returned): the batch leaves the outbox for this sink;
- transient failure (`DeliveryFailed`): the batch stays claimed, with the same items and the
  same idempotency key, and is retried after `Retry-After` when the upstream gave one, else
  after an exponential backoff with jitter: `min(backoff_max_s, backoff_initial_s * 2^n)`
  times a random factor in [0.5, 1];
- permanent reject (`DeliveryRejected`): the batch moves to the dead-letter table with the
  reply, and the next batch goes;
- items the sink cannot convert (`Unconvertible`, raised before anything is sent): each goes
  to the dead-letter table with the reason, and the rest of the batch is delivered at once;
- credential refused (`DeliveryUnauthorized`, HTTP 401/403): not the batch's fault, so
  nothing is dead-lettered. The sink pauses: the `sink_auth:{sink}` alarm is raised (the
  gateway's periodic check reads `auth_problem`), the batch stays with its key, and the sink
  probes again every `AUTH_PROBE_S`, or at once when its token file changes (the operator put
  in a new token). The first delivery that goes through clears the alarm.

A pipelined sink (`Sink.pipelined`: the `http` sink) draining a backlog claims and prepares
its next batch while the upstream answers the one before: the claim, the formatting and the
compression overlap the round trip, instead of following it. The next batch is claimed only
when the backlog fills it, and only one ahead; when the batch in flight fails, the prepared one
is put back (it stays claimed, with its key) and the failed one goes again first, so batches
reach the upstream in order. A kill in between leaves both claimed, and both go after the
restart, each with its key.

A sink may call `resume()` when its upstream is back (the `mqtt` sink does on reconnect):
a backoff sleep then ends at once, so recovery does not wait out a long backoff.

Each sink has its own thread and its own outbox connection, so one failing or slow sink never
holds back another: its items simply wait in `pending` for it alone.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from typing import Callable

from gateway.channels import ChannelTable
from gateway.config import SinkConfig
from gateway.errors import (DeliveryFailed, DeliveryRejected, DeliveryUnauthorized,
                            MeterlinkError, SinkError, Unconvertible)
from gateway.logfmt import kv
from gateway.outbox import Batch, Outbox
from gateway.sinks.base import Sink
from gateway.stats import Stats

log = logging.getLogger("meterlink.gateway.batcher")

IDLE_POLL_S = 1.0
# A background sink (`Sink.background`, the history) yields to ingest: it cuts a batch once
# ingest was quiet for QUIET_S, or once its oldest item waited MAX_DEFER_S, so that a burst is
# acknowledged to the nodes first and a sustained stream still cannot starve it.
QUIET_S = 0.25
MAX_DEFER_S = 10.0
CRASH_PAUSE_S = 5.0  # after an unexpected error: the batch stays claimed, retried then
AUTH_PROBE_S = 60.0  # between deliveries tried while the upstream refuses the credential
GAUGE_S = 1.0  # the backlog gauges are brought up to date at most this often


def backoff_delay(attempts: int, *, initial: float, maximum: float,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempts` (1 = first retry), with jitter (from `rng`,
    else the `random` module's generator)."""
    base = min(maximum, initial * (2 ** max(0, attempts - 1)))
    return base * (0.5 + 0.5 * (rng or random).random())


class SinkWorker:
    """Delivers one sink's backlog; see the module docstring."""

    def __init__(self, sink: Sink, config: SinkConfig, outbox_path, stats: Stats, *,
                 clock=time.time, table: ChannelTable | None = None) -> None:
        self.sink = sink
        self.table = table  # resolves stored reading messages (default: the shipped table)
        self.config = config
        self.name = config.name
        self.outbox_path = outbox_path
        self.stats = stats
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resume = threading.Event()
        self.auth_problem: str | None = None  # the refusal while paused, else None
        self.delivered = False  # a batch went through since the start
        self.auth_probe_s = AUTH_PROBE_S
        # seconds since ingest last handled a batch (set by the gateway for background sinks)
        self.ingest_quiet: Callable[[], float] | None = None
        self._age = 0.0  # of the oldest item waiting, as _due last saw it
        self._gauged = -GAUGE_S  # monotonic time the backlog gauges were last set
        sink.resume = self.resume
        self._thread: threading.Thread | None = None
        self.box: Outbox | None = None
        # a pipelined sink's next batch, claimed and prepared while the upstream answered
        # the one before: (batch, poison, prepared or None when every item was poison)
        self._next: tuple[Batch, list, object] | None = None

    def __repr__(self) -> str:
        return f"SinkWorker({self.name!r})"

    def start(self) -> None:
        self.sink.open()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def resume(self) -> None:
        """The upstream is back (called by the sink, any thread): end a backoff sleep."""
        self._resume.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._resume.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001 - closing must not mask the shutdown
            log.exception("sink_close_failed", extra=kv(sink=self.name))

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _backoff(self, seconds: float) -> None:
        """Sleeps `seconds`, less when the sink says its upstream is back."""
        self._resume.clear()
        if self._stop.is_set():  # stop() set _resume just before the clear above
            return
        self._resume.wait(seconds)

    def _paused(self, seconds: float) -> None:
        """Sleeps `seconds` while the credential is refused, less when it changes or the
        sink says its upstream took it (`resume`)."""
        self._resume.clear()
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            if self.sink.credential_changed():
                log.info("sink_credential_changed", extra=kv(sink=self.name, action="probe"))
                return
            if self._resume.wait(min(1.0, max(0.0, end - time.monotonic()))):
                return

    def _convert(self, batch: Batch, poison: list, convert: Callable[[Batch], object]):
        """`convert(batch)` (the sink's `deliver` or `prepare`) less the items the sink cannot
        convert (added to `poison`); None when no item is left."""
        view = batch
        while view.items:
            try:
                return convert(view)
            except Unconvertible as exc:
                poison.extend(exc.items)
                bad = {id(item) for item, _ in exc.items}
                view = dataclasses.replace(view, items=tuple(
                    it for it in view.items if id(it) not in bad))
                for item, reason in exc.items:
                    log.error("item_unconvertible", extra=kv(
                        sink=self.name, node=item.node, seq=item.seq, kind=item.kind,
                        error=reason, action="dead-letter"))
        return None

    def _claim(self, box: Outbox, after: Batch | None = None):
        """(batch, poison, prepared) of the sink's next batch (`Outbox.claim_batch`), or None;
        `prepared` is the pipelined sink's, else None."""
        batch = box.claim_batch(self.name, max_records=self.config.batch_max_records,
                                max_bytes=self.config.batch_max_bytes,
                                after=None if after is None else after.id)
        if batch is None:
            return None
        poison: list = []
        prepared = self._convert(batch, poison, self.sink.prepare) if self.sink.pipelined \
            else None
        return batch, poison, prepared

    def _pipelined(self, box: Outbox, batch: Batch, prepared) -> float:
        """Sends `prepared`, claims and prepares the next batch while the upstream answers
        (when the backlog fills one: `Outbox.claim_batch(after=...)`), then waits for the
        answer; returns the seconds the next batch took. That batch's claim is in the
        outbox: should preparing it fail, the answer is still read, and the batch is claimed
        again in turn."""
        answer = self.sink.send(prepared)
        started = time.monotonic()
        try:
            self._next = self._claim(box, after=batch)
        except Exception:  # noqa: BLE001 - that batch's own problem; this one's answer first
            log.exception("sink_worker_error", extra=kv(sink=self.name, stage="next batch"))
        spent = time.monotonic() - started
        answer()
        return spent

    def _due(self, box: Outbox) -> float:
        """0 when a batch should be cut now, else seconds until it should (at most the poll).

        Decided from the head of the backlog (one batch's worth); the whole backlog is
        summed for the gauges at most every GAUGE_S, as that costs a scan of every row."""
        now = time.monotonic()
        if now >= self._gauged + GAUGE_S:  # also while a drain keeps a batch open
            self._gauged = now
            total, _, first = box.backlog(self.name)
            self.stats.gauge("sink_backlog", self.name, total)
            self.stats.gauge("sink_backlog_age_seconds", self.name,
                             0.0 if first is None else max(0.0, self._clock() - first))
        if box.has_open_batch(self.name):
            return 0.0
        count, size, oldest = box.backlog(self.name, head=self.config.batch_max_records)
        if not count:
            self.stats.gauge("sink_backlog", self.name, 0)
            self.stats.gauge("sink_backlog_age_seconds", self.name, 0.0)
            return IDLE_POLL_S
        if count >= self.config.batch_max_records or size >= self.config.batch_max_bytes:
            return 0.0
        age = self._age = self._clock() - oldest
        if age < 0:  # stored "in the future": the clock was stepped back; do not wait for it
            return 0.0
        return max(0.0, min(IDLE_POLL_S, self.config.batch_max_age_s - age))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.box = box = Outbox(self.outbox_path, table=self.table)
            except SinkError as exc:
                log.error("sink_outbox_failed", extra=kv(sink=self.name, error=str(exc),
                                                         retry_in=CRASH_PAUSE_S))
                self._sleep(CRASH_PAUSE_S)
                continue
            try:
                while not self._stop.is_set():
                    wait = self._due(box)
                    if wait > 0:
                        self._wake.wait(wait)
                        self._wake.clear()
                        continue
                    wait = self._yield_to_ingest()
                    if wait > 0:
                        self._stop.wait(wait)
                        continue
                    self._one(box)
            except Exception:  # noqa: BLE001 - a bug or a locked database: loud, then go on
                self._next = None
                log.exception("sink_worker_error", extra=kv(sink=self.name,
                                                            retry_in=CRASH_PAUSE_S))
                self.stats.labeled("sink_errors", f"{self.name}:internal", 1)
                self._sleep(CRASH_PAUSE_S)
            finally:
                box.close()

    def _yield_to_ingest(self) -> float:
        """Seconds a background sink waits before its batch (0: go now); see QUIET_S."""
        if self.ingest_quiet is None:
            return 0.0
        quiet = self.ingest_quiet()
        if quiet >= QUIET_S or self._age >= MAX_DEFER_S:
            return 0.0
        return QUIET_S - quiet

    def _one(self, box: Outbox) -> None:
        claimed, self._next = self._next or self._claim(box), None
        if claimed is None:
            return
        batch, poison, prepared = claimed
        started = time.monotonic()
        try:
            if not self.sink.pipelined:
                self._convert(batch, poison, self.sink.deliver)
            elif prepared is not None:
                started += self._pipelined(box, batch, prepared)  # not this batch's latency
        except DeliveryRejected as exc:
            box.dead_letter(batch, exc.status, exc.reply, poison)
            self._count_poison(poison)
            self.stats.labeled("sink_errors", f"{self.name}:rejected", 1)
            self.stats.labeled("sink_deadletters", self.name, 1)
            log.error("batch_rejected", extra=kv(sink=self.name, key=batch.key,
                                                 items=len(batch.items), status=exc.status,
                                                 error=str(exc), action="dead-letter"))
            return
        except DeliveryUnauthorized as exc:
            self._next = None  # this batch goes again first
            box.failed(batch, str(exc))
            self.stats.labeled("sink_errors", f"{self.name}:unauthorized", 1)
            if self.auth_problem is None:
                log.error("sink_paused", extra=kv(sink=self.name, error=str(exc),
                                                  probe_every=self.auth_probe_s,
                                                  action="keep the outbox, raise sink_auth"))
            self.auth_problem = str(exc)
            self._paused(self.auth_probe_s)
            return
        except (DeliveryFailed, MeterlinkError, OSError) as exc:
            self._next = None  # this batch goes again first
            retry_after = getattr(exc, "retry_after", None)
            box.failed(batch, str(exc))
            attempts = batch.attempts + 1
            delay = retry_after if retry_after is not None else backoff_delay(
                attempts, initial=self.config.backoff_initial_s,
                maximum=self.config.backoff_max_s)
            self.stats.labeled("sink_errors", f"{self.name}:transient", 1)
            log.warning("batch_failed", extra=kv(sink=self.name, key=batch.key,
                                                 items=len(batch.items), attempts=attempts,
                                                 retry_in=round(delay, 3),
                                                 retry_after=retry_after, error=str(exc)))
            self._backoff(delay)
            return
        latency = time.monotonic() - started
        box.confirm(batch, poison,
                    then_cut=(self.config.batch_max_records, self.config.batch_max_bytes))
        self._count_poison(poison)
        self.delivered = True
        if self.auth_problem is not None:
            log.info("sink_resumed", extra=kv(sink=self.name))
            self.auth_problem = None
        bad = {id(item) for item, _ in poison}
        sent = [it for it in batch.items if id(it) not in bad]
        records = sum(len(it.body) if it.kind == "reading" else 1 for it in sent)
        self.stats.labeled("sink_batches", self.name, 1)
        self.stats.labeled("sink_items", self.name, len(sent))
        self.stats.labeled("sink_records", self.name, records)
        self.stats.observe("sink_latency_seconds", self.name, latency)
        log.debug("batch_delivered", extra=kv(sink=self.name, key=batch.key,
                                              items=len(sent), attempts=batch.attempts,
                                              latency=round(latency, 4)))

    def _count_poison(self, poison: list) -> None:
        if poison:
            self.stats.labeled("sink_errors", f"{self.name}:unconvertible", len(poison))
            self.stats.labeled("sink_deadletters", self.name, len(poison))
