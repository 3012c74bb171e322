"""Coverage-guided fuzzing of meterlink's decoders with atheris (libFuzzer for CPython).

    python tests/fuzz/run.py TARGET [-runs=N] [libFuzzer options]   one target
    python tests/fuzz/run.py --all [TARGET ...] [-runs=N]           every target (or those) in
                                                                    turn, then a summary table
    python tests/fuzz/run.py --merge TARGET|--all                   minimise the kept corpus
    python tests/fuzz/run.py --list

Targets are gateway_targets.TARGETS (CPython code) and node_targets.TARGETS (the node's code,
run here under CPython with node_shim; tests/test_fuzz_corpus.py replays the corpus under the
real MicroPython). Each run starts from the kept corpus, tests/fuzz/corpus/TARGET/, and writes
what it finds new to build/fuzz/corpus/TARGET/; `--merge` folds that back into the kept corpus,
minimised by libFuzzer's -merge=1 (at most MAX_KEPT files).

A contract violation does not stop the campaign: the first input of each distinct failure
(exception type and the innermost frame of meterlink code) is copied into the kept corpus as
`crash-<id>`, so the replay test fails until it is fixed, and its traceback is written to
build/fuzz/findings/TARGET/crash-<id>.txt. A node target's input is replayed in MicroPython
first; one that passes there is only written down (`cpython-only-<id>.txt`). An input slower
than SLOW_S is recorded the same way (`slow-<id>`); one that runs past -timeout stops
libFuzzer, which says so.

Needs atheris (`pip install -e .[fuzz]`, done by `make setup`). `make fuzz` runs
`--all -runs=1000000` then `--merge --all`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"
DICTS = HERE / "dict"
BUILD = ROOT / "build" / "fuzz"
MAX_KEPT = 200
SLOW_S = 2.0
# the targets' outboxes and files: tmpfs when there is one (no fsync cost); a run's folder is
# made inside the folder the parent made for it (METERLINK_FUZZ_SCRATCH), which the parent
# removes: libFuzzer ends the process with exit(), past Python's own clean-up
SCRATCH = os.environ.get("METERLINK_FUZZ_SCRATCH") or (
    "/dev/shm" if os.path.isdir("/dev/shm") else None)

GATEWAY = ("reading", "topic", "status", "ack", "gateway_config", "api")
NODE = ("node_config", "node_downlink", "mbus", "modbus", "pms5003", "ds18b20")
TARGETS = GATEWAY + NODE
# libFuzzer's -max_len per target: a little over each decoder's own size limit, so the limit
# itself is exercised
MAX_LEN = {"reading": 5000, "topic": 400, "status": 600, "ack": 1100, "gateway_config": 4096,
           "api": 4096, "node_config": 8300, "node_downlink": 1100, "mbus": 300, "modbus": 300,
           "pms5003": 64, "ds18b20": 256}
# libFuzzer -dict per target (tests/fuzz/dict/NAME.dict): the tokens of each input language
DICT = {"status": "cbor_maps", "ack": "cbor_maps", "node_downlink": "cbor_maps", "api": "api",
        "gateway_config": "gateway_config", "node_config": "node_config"}
# the modules whose code the fuzzer sees (coverage feedback and comparison hooks): ours only.
# atheris 2.3.0 mis-instruments some of Python 3.11's standard library (tomllib raised a
# TypeError from its own parser loop that plain CPython never raises), and every finding is
# re-checked uninstrumented by the replay test anyway.
INSTRUMENT_GATEWAY = ["gateway"]
INSTRUMENT_NODE = ["cbordec", "downlink", "config", "sensors", "cfg_gpio", "cfg_i2c",
                   "cfg_pulse", "cfg_serial", "bootinfo", "files", "cbor", "ota", "status",
                   "mbus", "mbusparse", "modbus", "pms5003", "ds18b20", "channels"]
_OWN_CODE = (str(ROOT / "gateway"), str(ROOT / "firmware"), str(ROOT / "drivers"))


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in meterlink's own code (else the innermost)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename.startswith(_OWN_CODE)] or frames[-1:]
    where = f"{Path(own[-1].filename).name}:{own[-1].lineno}" if own else "?"
    return f"{type(exc).__name__} {where}"


def micropython_verdict(target: str, data: bytes) -> str | None:
    """None when `data` passes node target `target` in the MicroPython unix port (the image
    build, as tests/test_fuzz_corpus.py runs it), else what the replay printed."""
    sys.path.insert(0, str(ROOT))
    from host_tools import toolchain

    with tempfile.TemporaryDirectory() as tmp:
        corpus, work = Path(tmp, "corpus"), Path(tmp, "work")
        corpus.mkdir()
        work.mkdir()
        (corpus / "input").write_bytes(data)
        proc = subprocess.run(
            [toolchain.micropython(), "-X", "heapsize=1M", str(HERE / "mpy_replay.py"), target,
             str(corpus), str(work)],
            env={"MICROPYPATH": toolchain.micropypath(HERE), "PATH": "/usr/bin:/bin"},
            cwd=work, capture_output=True, text=True, timeout=120)
    return None if proc.returncode == 0 else proc.stdout + proc.stderr


class _Recorder:
    """Wraps a target: a violation is recorded (once per signature) and the campaign goes on.

    For a node target the input is replayed in MicroPython first: one that passes there is a
    difference between the interpreters (`cpython-only-<id>.txt` in the findings, nothing in
    the corpus), not a finding."""

    def __init__(self, target: str, fn, *, record: bool = True) -> None:
        self.target = target
        self.fn = fn
        self.record = record  # False while merging: the corpus is being sorted, not tested
        self.seen: set[str] = set()
        self.findings = BUILD / "findings" / target
        self.kept = CORPUS / target
        self.known = {p.read_bytes() for p in self.kept.glob("*")
                      if p.name.startswith(("crash-", "slow-"))} if self.kept.is_dir() else set()

    def _record(self, kind: str, signature: str, data: bytes, text: str) -> None:
        if signature in self.seen or not self.record:
            return
        self.seen.add(signature)
        ident = hashlib.sha1(signature.encode()).hexdigest()[:12]
        self.findings.mkdir(parents=True, exist_ok=True)
        self.kept.mkdir(parents=True, exist_ok=True)
        if self.target in NODE and kind == "crash":
            verdict = micropython_verdict(self.target, data)
            if verdict is None:
                kind = "cpython-only"
            else:
                text += f"\nThe same input in MicroPython:\n{verdict}"
        name = f"{kind}-{ident}"
        if kind != "cpython-only" and data not in self.known:
            self.known.add(data)
            if not (self.kept / name).exists():
                (self.kept / name).write_bytes(data)
        (self.findings / f"{name}.txt").write_text(
            f"target: {self.target}\nsignature: {signature}\ninput ({len(data)} bytes, hex): "
            f"{data.hex()}\n\n{text}")
        print(f"\n==> {self.target}: {kind} {signature} -> {self.findings / name}.txt",
              file=sys.stderr, flush=True)

    def __call__(self, data: bytes) -> None:
        t0 = time.monotonic()
        try:
            self.fn(data)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - every escape is a finding
            self._record("crash", _signature(exc), data, traceback.format_exc())
            return
        took = time.monotonic() - t0
        if took > SLOW_S:
            self._record("slow", f"slow {self.target}", data,
                         f"took {took:.1f} s (limit {SLOW_S} s)\n")


def load_target(target: str, workdir: str, *, instrument: bool):
    """The target function, its code imported under atheris instrumentation when asked."""
    sys.path.insert(0, str(HERE))
    ctx = None
    if target in NODE:
        import node_shim

        node_shim.install()
    if instrument:
        import atheris

        ctx = atheris.instrument_imports(
            include=INSTRUMENT_NODE if target in NODE else INSTRUMENT_GATEWAY)
        ctx.__enter__()
    if target in NODE:
        import node_targets as mod
    else:
        import gateway_targets as mod
    mod.setup(workdir)
    if target == "api":
        mod._api()  # starts the server (and imports uvicorn, fastapi) under instrumentation
    if ctx is not None:
        ctx.__exit__(None, None, None)
    return mod.TARGETS[target]


def fuzz_one(target: str, args: list[str]) -> None:
    import atheris

    work = tempfile.mkdtemp(prefix=f"meterlink-fuzz-{target}-", dir=SCRATCH)
    fn = load_target(target, work, instrument=True)
    opts = [a for a in args if a.startswith("-")]
    dirs = [a for a in args if not a.startswith("-")]
    merging = any(a.startswith("-merge") for a in opts)
    recorder = _Recorder(target, fn, record=not merging)
    new = BUILD / "corpus" / target
    new.mkdir(parents=True, exist_ok=True)
    (BUILD / "artifacts").mkdir(parents=True, exist_ok=True)
    if not merging:
        dirs = dirs or [str(new), str(CORPUS / target)]
    defaults = {"-max_len": str(MAX_LEN[target]), "-timeout": "20", "-rss_limit_mb": "3072",
                "-print_final_stats": "1",
                "-artifact_prefix": str(BUILD / "artifacts") + f"/{target}-"}
    if target in DICT:
        defaults["-dict"] = str(DICTS / f"{DICT[target]}.dict")
    given = {a.split("=", 1)[0] for a in opts}
    opts += [f"{k}={v}" for k, v in defaults.items() if k not in given]
    # libFuzzer's -merge=1 runs its inner passes as `argv[0] ARGS...` through the shell: this
    # command line, so that they run this target
    command = f"{sys.executable} {Path(__file__).resolve()} {target}"
    atheris.Setup([command, *opts, *dirs], recorder)
    atheris.Fuzz()


def _child(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """This script on `args` in a process of its own, its scratch folder removed after."""
    scratch = tempfile.mkdtemp(prefix="meterlink-fuzz-", dir=SCRATCH)
    try:
        return subprocess.run([sys.executable, __file__, *args], cwd=ROOT,
                              env={**os.environ, "METERLINK_FUZZ_SCRATCH": scratch}, **kwargs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_STATS = {"execs": re.compile(r"stat::number_of_executed_units:\s+(\d+)"),
          "rate": re.compile(r"stat::average_exec_per_sec:\s+(\d+)"),
          "rss": re.compile(r"stat::peak_rss_mb:\s+(\d+)")}


def run_all(targets: list[str], args: list[str]) -> int:
    """Each target in its own process, one after another; a summary table at the end."""
    logs = BUILD / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for target in targets:
        before = set((BUILD / "findings" / target).glob("*.txt")) \
            if (BUILD / "findings" / target).exists() else set()
        log_path = logs / f"{target}.log"
        print(f"== {target}: {' '.join(args)} (log: {log_path})", flush=True)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            proc = _child([target, *args], stdout=log, stderr=subprocess.STDOUT)
        took = time.monotonic() - t0
        text = log_path.read_text(errors="replace")
        stats = {k: int(m.group(1)) for k, r in _STATS.items() if (m := r.search(text))}
        after = set((BUILD / "findings" / target).glob("*.txt")) \
            if (BUILD / "findings" / target).exists() else set()
        stopped = ""
        if proc.returncode != 0:
            m = re.search(r"ERROR: libFuzzer: ([\w-]+)|==\d+== ERROR: libFuzzer: ([\w-]+)", text)
            stopped = (m.group(1) or m.group(2)) if m else f"exit {proc.returncode}"
        execs = stats.get("execs", 0)
        rows.append((target, execs, took, stats.get("rate") or round(execs / took),
                     len(after - before), len(after), stopped))
    print()
    print(f"{'target':<15} {'execs':>9} {'seconds':>8} {'exec/s':>7} {'new crashes':>11} "
          f"{'all crashes':>11}  stopped by")
    for target, execs, took, rate, new, total, stopped in rows:
        print(f"{target:<15} {execs:>9} {took:>8.0f} {rate:>7} {new:>11} {total:>11}  "
              f"{stopped or '-'}")
    return 1 if any(r[6] for r in rows) else 0


def merge(target: str) -> None:
    """Minimises tests/fuzz/corpus/TARGET with what build/fuzz/corpus/TARGET found (libFuzzer
    -merge=1: the smallest set of inputs with the same coverage); crash-/slow- files stay."""
    kept = CORPUS / target
    kept.mkdir(parents=True, exist_ok=True)
    found = BUILD / "corpus" / target
    found.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"merge-{target}-", dir=BUILD))
    keep = {p.name: p.read_bytes() for p in kept.iterdir()
            if p.name.startswith(("crash-", "slow-"))}
    _child([target, "-merge=1", str(out), str(kept), str(found)], check=True)
    files = sorted(out.iterdir(), key=lambda p: p.stat().st_size)
    if not files:
        raise SystemExit(f"{target}: the merge kept nothing; {kept} left as it was")
    if len(files) > MAX_KEPT:
        print(f"{target}: {len(files)} files after the merge, keeping the {MAX_KEPT} smallest",
              file=sys.stderr)
        files = files[:MAX_KEPT]
    for p in kept.iterdir():
        p.unlink()
    for p in files:
        if p.read_bytes() not in keep.values():  # a crash file is kept under its own name
            shutil.copy(p, kept / p.name)
    for name, data in keep.items():
        (kept / name).write_bytes(data)
    shutil.rmtree(out)
    print(f"{target}: {len(list(kept.iterdir()))} files kept in {kept.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        print("\n".join(TARGETS))
        return 0
    if argv[0] == "--all":
        names = [a for a in argv[1:] if not a.startswith("-")]
        unknown = sorted(set(names) - set(TARGETS))
        if unknown:
            print(f"run.py: unknown target {unknown[0]!r}", file=sys.stderr)
            return 2
        return run_all(names or list(TARGETS), [a for a in argv[1:] if a.startswith("-")])
    if argv[0] == "--merge":
        for target in (TARGETS if argv[1:] == ["--all"] else argv[1:]):
            merge(target)
        return 0
    target = argv[0]
    if target not in TARGETS:
        print(f"run.py: unknown target {target!r} (known: {', '.join(TARGETS)})",
              file=sys.stderr)
        return 2
    fuzz_one(target, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
