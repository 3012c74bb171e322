"""The fuzz corpus replayed: every file in tests/fuzz/corpus/TARGET/ (kept by `make fuzz`, see
tests/fuzz/run.py) through its target, with the target's contract (the docstrings of
tests/fuzz/gateway_targets.py and node_targets.py): the gateway's decoders in CPython, the
node's in the MicroPython unix port (the image build, firmware frozen in, as on a node), one
MicroPython process per target. A `crash-*` file is an input that broke a contract when it was
found: it stays, and passes once the decoder is fixed."""

import importlib.util
import subprocess
import traceback
from pathlib import Path

import pytest

from host_tools import toolchain

FUZZ = Path(__file__).parent / "fuzz"
CORPUS = FUZZ / "corpus"
HEAP = "1M"  # the targets' fakes and the corpus besides the firmware's own 96 KB


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = _load("run")


def _files(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if not p.name.startswith("."))


def test_every_target_has_a_corpus_and_every_corpus_a_target():
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(RUN.TARGETS)
    for target in RUN.TARGETS:
        files = _files(target)
        assert 0 < len(files) <= RUN.MAX_KEPT + 20, (target, len(files))


@pytest.fixture(scope="module")
def gateway_targets(tmp_path_factory):
    module = _load("gateway_targets")
    module.setup(tmp_path_factory.mktemp("fuzz-gateway"), quiet=False)
    yield module
    module.teardown()


@pytest.mark.parametrize("target", RUN.GATEWAY)
def test_gateway_corpus(target, gateway_targets):
    fn = gateway_targets.TARGETS[target]
    failures = []
    for path in _files(target):
        try:
            fn(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - every escape is a contract violation
            failures.append(f"{path.name}: {exc!r}\n"
                            f"{''.join(traceback.format_exception(exc)[-6:])}")
    assert not failures, f"{len(failures)} of {len(_files(target))} inputs break the " \
                         f"{target} contract:\n" + "\n".join(failures)


@pytest.mark.parametrize("target", RUN.NODE)
def test_node_corpus_in_micropython(target, tmp_path):
    env = {"MICROPYPATH": toolchain.micropypath(FUZZ), "PATH": "/usr/bin:/bin",
           "METERLINK_ROOT": str(toolchain.ROOT)}
    proc = subprocess.run(
        [toolchain.micropython(), "-X", f"heapsize={HEAP}", str(FUZZ / "mpy_replay.py"), target,
         str(CORPUS / target), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and " 0 failed" in out, \
        f"MicroPython replay of the {target} corpus:\n{out}"
    assert f"replayed {len(_files(target))} files" in out, out
