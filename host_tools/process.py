"""Stopping the child processes the tools start (broker, gateway, virtual nodes)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout`; returns its exit
    status. A process that already exited is only reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
