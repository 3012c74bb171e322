"""The virtual boards running on this machine, so that `meterlink ports` can list them.

    with announce(board, image="meterlink"):   # `meterlink vboard` while it runs
        ...
    for b in running():                         # `meterlink ports`
        print(b.port, b.chip, b.image, b.dir)

Each running `meterlink vboard` keeps one small JSON file, `{pid}.json`, in the user's runtime
folder: `$METERLINK_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/meterlink`, else
`/tmp/meterlink-{uid}`. The file goes when the board stops; a board killed with SIGKILL leaves
it behind, so `running()` keeps only files whose process is alive and whose port exists, and
deletes the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from meterlink_common import write_atomic


@dataclass(frozen=True)
class RunningBoard:
    port: str
    chip: str
    image: str
    dir: str
    pid: int


def runtime_dir() -> Path:
    explicit = os.environ.get("METERLINK_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "meterlink"
    return Path(tempfile.gettempdir()) / f"meterlink-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def announce(port: str, chip: str, image: str, folder: str | Path) -> Iterator[Path]:
    """Lists the board while the block runs (the file is written atomically)."""
    where = runtime_dir()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = where / f"{os.getpid()}.json"
    entry = RunningBoard(port=port, chip=chip, image=image,
                         dir=str(Path(folder).resolve()), pid=os.getpid())
    write_atomic(path, json.dumps(asdict(entry)).encode())
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def running() -> list[RunningBoard]:
    """The virtual boards that run now, by port; stale entries are removed."""
    where = runtime_dir()
    out = []
    for path in sorted(where.glob("*.json")) if where.is_dir() else []:
        try:
            entry = RunningBoard(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours
        if _alive(entry.pid) and os.path.exists(entry.port):
            out.append(entry)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return sorted(out, key=lambda b: b.port)
