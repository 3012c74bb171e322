"""Early-warning rules: alarms an operator defines in the config (`[rules.NAME]`).

    engine = RuleEngine(config.rules, registry)
    engine.readings(node, records, base, now)   # ingest: the new records of a message
    engine.periodic(now)                        # stale channels, hourly balances
    engine.replace(new_rules, now)              # a reloaded config

Four kinds (docs/gateway.md, "Early-warning rules"; values in the channel's SenML unit):

    threshold   the value below (or above) a level for `hold`; clears once it is back at
                `clear` (default the level itself): hysteresis, so a value that hovers at the
                level does not flap
    rate        the value drops (or rises) by `drop_percent` within `window`: a burst main.
                Clears when the value is back within half that percentage of the level it
                fell from (rose from)
    stale       no value of the channel for `after` (by the gateway's clock); clears with the
                next value
    balance     per hour, a district meter's consumption against the sum of the other meters
                of its district (from the meters' totals at each full hour, interpolated
                between the readings either side): raised when more than `loss_percent` of
                what went in is not accounted for in `hours` consecutive complete hours, on
                the district meter. An hour is complete when every meter of the district
                that reported the channel has readings on both sides of both of its ends;
                it is computed `wait` after it ended

A rule is an alarm named `rule:NAME` on the node it is about, so it goes where every alarm
goes: raised once and cleared once, in the same transaction as the reading that decided it,
to the sinks as an event (with `readings`, the values that decided it), into the alarm
history, the API and the dashboard. Everything runs on the ingest thread.

Cost: each rule is compiled once into a function with its levels bound in, and the functions
are looked up by (node, wire key), built once per node and rule set, so a value no rule
watches costs one dictionary lookup and one a rule watches a call that compares it and
returns; only a change of state builds text. `make bench` (bench_rules.py) measures ingest
with 100 rules against ingest without.

The state between readings (a threshold's start, a rate's window, a balance's hourly totals)
lives in memory: after a restart a hold starts again and a balance needs two full hours. The
alarm states themselves are in the outbox, so a raised rule stays raised across a restart
and clears with the first value that clears it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable, Iterable, Sequence

from gateway.config import Rule
from gateway.logfmt import kv
from gateway.registry import Registry
from gateway.wire import senml_value

log = logging.getLogger("meterlink.gateway.rules")

HOUR = 3600
# hour ends kept per meter for balances (a day and a bit: `hours` up to a week needs more
# in memory than a restart keeps anyway)
BALANCE_KEEP_H = 170


def _fmt(v: float) -> str:
    return f"{v:.6g}"


class _NodeState:
    """What one rule remembers about one node."""

    __slots__ = ("raised", "since", "first", "last_t", "window", "ref", "seen")

    def __init__(self, raised: bool) -> None:
        self.raised = raised  # the alarm's state, as the registry had it (kept in step)
        self.since: float | None = None  # threshold: start of the current breach
        self.first: dict[str, Any] | None = None  # the reading that started it
        self.last_t = -math.inf  # newest reading time taken (older ones are skipped)
        self.window: deque = deque()  # rate: (t, v), the window's peak (trough) first
        self.ref: float | None = None  # rate: the level it fell from (rose from) when raised
        self.seen: float | None = None  # stale: when the channel was last received


class _Meter:
    """A balance's view of one meter: its last reading and its totals at full hours."""

    __slots__ = ("t", "v", "at")

    def __init__(self) -> None:
        self.t: float | None = None
        self.v = 0.0
        self.at: dict[int, float] = {}  # hour end (Unix s) -> total then (interpolated)

    def add(self, t: float, v: float) -> None:
        if self.t is not None and t > self.t:
            for end in range((int(self.t) // HOUR + 1) * HOUR, int(t) + 1, HOUR):
                self.at[end] = self.v + (v - self.v) * (end - self.t) / (t - self.t)
            if len(self.at) > BALANCE_KEEP_H:
                for end in sorted(self.at)[:-BALANCE_KEEP_H]:
                    del self.at[end]
        if self.t is None or t >= self.t:
            self.t, self.v = t, v
            if t % HOUR == 0:
                self.at[int(t)] = v


Evaluate = Callable[[str, float, float, float], None]  # (node, reading time, value, now)


class RuleEngine:
    """The rules of one config, evaluated on the ingest thread against the registry."""

    def __init__(self, rules: Sequence[Rule], registry: Registry) -> None:
        self.registry = registry
        self.rules: tuple[Rule, ...] = ()
        self._states: dict[str, dict[str, _NodeState]] = {}  # rule -> node -> state
        self._compiled: dict[str, Evaluate] = {}  # rule -> its function
        self._meters: dict[str, dict[str, _Meter]] = {}  # balance rule -> node -> meter
        self._done: dict[str, int] = {}  # balance rule -> last hour end computed
        self._over: dict[str, int] = {}  # balance rule -> consecutive hours over the limit
        self._places: dict[str, tuple[str | None, str | None]] = {}  # node -> (group, district)
        self._lookup: dict[str, dict[int, tuple[Evaluate, ...]]] = {}  # node -> key -> rules
        self._scales: dict[int, int] = {}  # wire key -> its channel's decimal scale
        self.evaluations = 0  # values a rule looked at (for the bench)
        self.replace(rules, None)

    def __repr__(self) -> str:
        return f"RuleEngine(rules={len(self.rules)})"

    # ---- configuration ----------------------------------------------------------------------

    def replace(self, rules: Sequence[Rule], now: float | None) -> list[str]:
        """Takes a new rule set (a reloaded config). A rule whose definition did not change
        keeps its state; the alarms of a rule that is gone or changed are cleared (`now`;
        none at start-up, when `now` is None). Returns what changed, for the log."""
        old = {r.name: r for r in self.rules}
        new = {r.name: r for r in rules}
        changes = []
        for name, rule in old.items():
            if new.get(name) == rule:
                continue
            changes.append(f"{'changed' if name in new else 'removed'} {name}")
            for table in (self._states, self._compiled, self._meters, self._done, self._over):
                table.pop(name, None)
            if now is not None:
                for node, alarm in self.registry.active_alarms():
                    if alarm == rule.alarm:
                        self.registry.set_alarm(node, alarm, False, now,
                                                "the rule was changed or removed")
        changes += [f"added {name}" for name in new if name not in old]
        self.rules = tuple(rules)
        for rule in rules:
            if rule.name not in self._compiled:
                self._compiled[rule.name] = self._compile(rule)
            self._scales[rule.key] = self.registry.table.lookup(rule.key)[0].scale
        self._lookup.clear()
        self.refresh_places()
        return changes

    def forget(self) -> None:
        """Drops what the rules remember of the nodes (the ingest transaction was rolled
        back: the alarm states are read from the registry again, as each is next needed)."""
        for states in self._states.values():
            states.clear()

    def refresh_places(self) -> None:
        """Groups and districts of the nodes (registered through the API; read again by the
        periodic check, so a node registered into a district joins its rules)."""
        if not any(r.group or r.district for r in self.rules):
            return
        places = self.registry.nodes.places()
        if places != self._places:
            self._places = places
            self._lookup.clear()

    def _in_scope(self, rule: Rule, node: str) -> bool:
        if rule.kind == "balance":
            return node == rule.meter or self._places.get(node, (None, None))[1] == rule.district
        if rule.nodes:
            return node in rule.nodes
        if rule.group:
            return self._places.get(node, (None, None))[0] == rule.group
        if rule.district:
            return self._places.get(node, (None, None))[1] == rule.district
        return True

    def _rules_of(self, node: str) -> dict[int, tuple[Evaluate, ...]]:
        by_key: dict[int, list[Evaluate]] = {}
        for rule in self.rules:
            if self._in_scope(rule, node):
                by_key.setdefault(rule.key, []).append(self._compiled[rule.name])
        out = {k: tuple(v) for k, v in by_key.items()}
        if len(self._lookup) >= 100_000:
            self._lookup.clear()
        self._lookup[node] = out
        return out

    # ---- inputs -----------------------------------------------------------------------------

    def readings(self, node: str, records: Iterable[tuple[int, dict[int, int]]], base: int,
                 now: float) -> None:
        """The new records of one reading message of `node` (the record shape: elapsed
        seconds from `base`, wire values by key)."""
        watched = self._lookup.get(node)
        if watched is None:
            watched = self._rules_of(node)
        if not watched:
            return
        scales = self._scales
        count = 0
        for elapsed, values in records:
            t = base + elapsed
            for key, raw in values.items():
                evaluate = watched.get(key)
                if evaluate is None:
                    continue
                v = senml_value(raw, scales[key])  # as the sinks send it
                for fn in evaluate:
                    fn(node, t, v, now)
                count += len(evaluate)
        self.evaluations += count

    def _states_of(self, rule: Rule) -> dict[str, _NodeState]:
        states = self._states.get(rule.name)
        if states is None:
            states = self._states[rule.name] = {}
        return states

    def _state(self, rule: Rule, states: dict[str, _NodeState], node: str) -> _NodeState:
        state = states[node] = _NodeState(self.registry.is_active(node, rule.alarm))
        return state

    def _reading(self, rule: Rule, node: str, t: float, v: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"n": f"{node}:{rule.channel}", "v": v, "t": t}
        if rule.unit:
            rec["u"] = rule.unit
        return rec

    def _set(self, rule: Rule, node: str, state: _NodeState | None, active: bool, now: float,
             detail: str, readings: list[dict[str, Any]]) -> None:
        if rule.description and active:
            detail = f"{rule.description}: {detail}"
        if state is not None:
            state.raised = active
        if self.registry.set_alarm(node, rule.alarm, active, now, detail, readings=readings):
            log.info("rule_" + ("raised" if active else "cleared"),
                     extra=kv(rule=rule.name, node=node, detail=detail))

    def _compile(self, rule: Rule) -> Evaluate:
        if rule.kind == "threshold":
            return self._threshold(rule)
        if rule.kind == "rate":
            return self._rate(rule)
        if rule.kind == "stale":
            return self._stale(rule)
        return self._balance_input(rule)

    def _threshold(self, rule: Rule) -> Evaluate:
        states = self._states_of(rule)
        below = rule.below is not None
        level = rule.below if below else rule.above
        clear = rule.clear if rule.clear is not None else level
        # compared as sign * value: one test for both sides
        sign = 1 if below else -1
        s_level, s_clear, hold = sign * level, sign * clear, rule.hold_s
        unit = f" {rule.unit}" if rule.unit else ""

        def evaluate(node: str, t: float, v: float, now: float) -> None:
            state = states.get(node)
            if state is None:
                state = self._state(rule, states, node)
            if t < state.last_t:
                return  # older than a record already taken: the rule has moved past it
            state.last_t = t
            sv = sign * v
            if state.raised:
                if sv >= s_clear:
                    state.since = state.first = None
                    self._set(rule, node, state, False, now,
                              f"{rule.channel} {_fmt(v)}{unit} is back at "
                              f"{'>=' if below else '<='} {_fmt(clear)}",
                              [self._reading(rule, node, t, v)])
            elif sv < s_level:
                if state.since is None:
                    state.since, state.first = t, self._reading(rule, node, t, v)
                if t - state.since >= hold:
                    held = f" for {_fmt(t - state.since)} s" if hold else ""
                    readings = [state.first, self._reading(rule, node, t, v)] \
                        if t > state.since else [state.first]
                    self._set(rule, node, state, True, now,
                              f"{rule.channel} {_fmt(v)}{unit} {'<' if below else '>'} "
                              f"{_fmt(level)}{held}", readings)
            elif state.since is not None:
                state.since = state.first = None
        return evaluate

    def _rate(self, rule: Rule) -> Evaluate:
        states = self._states_of(rule)
        drop = rule.drop_percent is not None
        percent = rule.drop_percent if drop else rule.rise_percent
        window_s = rule.window_s
        unit = f" {rule.unit}" if rule.unit else ""

        def evaluate(node: str, t: float, v: float, now: float) -> None:
            state = states.get(node)
            if state is None:
                state = self._state(rule, states, node)
            if t < state.last_t:
                return
            state.last_t = t
            window = state.window
            if state.raised:
                ref = state.ref
                if ref is None or ((v >= ref * (1 - percent / 200)) if drop
                                   else (v <= ref * (1 + percent / 200))):
                    state.ref = None
                    window.clear()
                    self._set(rule, node, state, False, now,
                              f"{rule.channel} {_fmt(v)}{unit} is back within "
                              f"{_fmt(percent / 2)}% of "
                              f"{_fmt(ref) if ref is not None else 'its level'}",
                              [self._reading(rule, node, t, v)])
                window.append((t, v))
                return
            # a monotonic deque: its head is the window's highest (drop) or lowest (rise)
            while window and ((window[-1][1] <= v) if drop else (window[-1][1] >= v)):
                window.pop()
            window.append((t, v))
            while t - window[0][0] > window_s:
                window.popleft()
            ref_t, ref = window[0]
            if ref > 0 and ((ref - v) if drop else (v - ref)) / ref * 100 >= percent:
                state.ref = ref
                self._set(rule, node, state, True, now,
                          f"{rule.channel} {'dropped' if drop else 'rose'} "
                          f"{_fmt(abs(v - ref) / ref * 100)}% in {_fmt(t - ref_t)} s, from "
                          f"{_fmt(ref)} to {_fmt(v)}{unit}",
                          [self._reading(rule, node, ref_t, ref),
                           self._reading(rule, node, t, v)])
        return evaluate

    def _stale(self, rule: Rule) -> Evaluate:
        states = self._states_of(rule)

        def evaluate(node: str, t: float, v: float, now: float) -> None:
            state = states.get(node)
            if state is None:
                state = self._state(rule, states, node)
            state.seen = now
            if state.raised:
                self._set(rule, node, state, False, now, f"{rule.channel} is reported again",
                          [])
        return evaluate

    def _balance_input(self, rule: Rule) -> Evaluate:
        meters = self._meters.setdefault(rule.name, {})

        def evaluate(node: str, t: float, v: float, now: float) -> None:
            meter = meters.get(node)
            if meter is None:
                meter = meters[node] = _Meter()
            meter.add(t, v)
        return evaluate

    # ---- periodic ---------------------------------------------------------------------------

    def periodic(self, now: float) -> None:
        """Stale channels and the balances of hours that ended `wait` ago (the ingest
        thread's periodic transaction)."""
        self.refresh_places()
        for rule in self.rules:
            if rule.kind == "stale":
                for node, state in self._states_of(rule).items():
                    if state.seen is not None and now - state.seen >= rule.after_s \
                            and not state.raised:
                        self._set(rule, node, state, True, now,
                                  f"no {rule.channel} for {_fmt(now - state.seen)} s "
                                  f"(limit {_fmt(rule.after_s)} s)", [])
            elif rule.kind == "balance":
                self._balance(rule, now)

    def _balance(self, rule: Rule, now: float) -> None:
        end = int(now - rule.wait_s) // HOUR * HOUR  # the latest hour end to compute
        meters = self._meters.get(rule.name, {})
        district = meters.get(rule.meter)
        if district is None:
            return
        last = self._done.get(rule.name)
        ends = sorted(e for e in district.at if e <= end and (last is None or e > last))
        for e in ends:
            start = e - HOUR
            if start not in district.at:
                continue
            self._done[rule.name] = e
            customers = [n for n in meters if n != rule.meter
                         and self._places.get(n, (None, None))[1] == rule.district]
            missing = [n for n in customers if start not in meters[n].at or e not in meters[n].at]
            if missing:
                log.info("rule_balance_incomplete", extra=kv(
                    rule=rule.name, hour=start, missing=",".join(sorted(missing)[:10])))
                continue
            went_in = district.at[e] - district.at[start]
            used = sum(meters[n].at[e] - meters[n].at[start] for n in customers)
            loss = went_in - used
            share = loss / went_in * 100 if went_in > 0 else 0.0
            over = share > rule.loss_percent
            self._over[rule.name] = self._over.get(rule.name, 0) + 1 if over else 0
            unit = f" {rule.unit}" if rule.unit else ""
            readings = [{"n": f"{rule.meter}:{rule.channel}:consumption",
                         "v": round(went_in, 9), "t": e,
                         **({"u": rule.unit} if rule.unit else {})},
                        {"n": f"{rule.district}:{rule.channel}:customers", "v": round(used, 9),
                         "t": e, **({"u": rule.unit} if rule.unit else {})}]
            detail = (f"hour from {start}: {_fmt(went_in)}{unit} in, {_fmt(used)}{unit} "
                      f"through {len(customers)} meters, {_fmt(loss)}{unit} "
                      f"({_fmt(share)}%) unaccounted")
            active = self.registry.is_active(rule.meter, rule.alarm)
            if self._over[rule.name] >= rule.hours and not active:
                self._set(rule, rule.meter, None, True, now, detail, readings)
            elif not over and active:
                self._set(rule, rule.meter, None, False, now, detail, readings)
