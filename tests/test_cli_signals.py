"""Every long-running `meterlink` command stops the processes it started (virtual nodes, the
pty board, the demo's broker and gateway) when it is stopped by SIGTERM (systemd, `kill`),
SIGINT (Ctrl-C) or SIGHUP (the terminal closed), and exits with 128 + the signal.

Field trial: `vboard` and `simulate` left their node processes running after SIGTERM, one
kept publishing for ten minutes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway_support import MELINK, wait_for

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every process under `pid` (by parent id), recursively."""
    parents: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


COMMANDS = {
    "vboard": (lambda d: ["vboard", "--dir", str(d / "vb")], 1),
    "simulate": (lambda d: ["simulate", "--nodes", "2", "--broker", "127.0.0.1:1",
                            "--dir", str(d / "sim")], 2),
    "demo": (lambda d: ["demo", "--duration", "300", "--out", str(d / "demo")], 3),
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_stopped_command_stops_every_process_it_started(tmp_path, command, sig):
    args, at_least = COMMANDS[command]
    proc = subprocess.Popen([MELINK, *args(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        kids = wait_for(lambda: len(descendants(proc.pid)) >= at_least and
                        descendants(proc.pid), 120, f"{command}'s processes")
        time.sleep(1)  # all of them started
        kids = descendants(proc.pid) | kids
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the demo ends on SIGINT and SIGTERM as at the end of its run: with its summary
    expected = {0, 1} if command == "demo" and sig != signal.SIGHUP else {128 + sig}
    assert proc.returncode in expected, (proc.returncode, err[-2000:])
    wait_for(lambda: not [k for k in kids if alive(k)], 20,
             f"every process {command} started to end",
             lambda: f"still running: {[k for k in kids if alive(k)]}; stderr: {err[-2000:]}")
