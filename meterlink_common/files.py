"""Files replaced atomically: a reader sees the old file or the new one, never half of either.

    write_atomic(path, data)                       bytes, mode 0o666 less the umask
    write_atomic(path, key, mode=0o600, durable=True)   a secret that must survive a power cut
    write_atomic(path, text.encode(), keep_mode=True)   a file an operator may have chmod'ed
    write_json_atomic(path, obj)                   JSON, indented, one newline at the end

The data goes to a temporary file next to `path` (`.NAME.PID.tmp`: hidden, one per process, so
two writers never share one), which is then renamed over `path` (`os.replace`, atomic on a
POSIX file system). The temporary file is removed when anything fails. `durable=True` also
flushes it to the disk before the rename, so that after a power cut the file is the old one or
the new one, not an empty one; it costs a disk flush, so files rewritten often (counters, a
virtual board's state) go without. The folder must exist.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

DEFAULT_MODE = 0o666  # what open() creates a file with, before the umask


def write_atomic(path: Path, data: bytes, *, mode: int = DEFAULT_MODE, keep_mode: bool = False,
                 durable: bool = False) -> None:
    """Replaces `path` with `data`, atomically (see the module docstring).

    `mode`: the new file's permissions, less the umask, as `os.open` applies them;
    `keep_mode`: when `path` exists, the new file gets exactly its permissions instead (as
    `shutil.copymode`); `durable`: flushed to the disk (fsync) before the rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if keep_mode and path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replaces `path` with `data` as JSON, atomically (readers see old or new, never half)."""
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
