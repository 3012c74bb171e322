"""Small atomic file helpers for the node's state files on flash (temp file, then rename, so a
power cut leaves the old or the new content, never a mix)."""

import os


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def read_text(path):
    try:
        with open(path) as f:
            return f.read() or None
    except OSError:
        return None


def write_text(path, text):
    """Writes str or bytes atomically (temp file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(text, (bytes, bytearray)) else "w") as f:
        f.write(text)
    os.rename(tmp, path)


def bump(path):
    n = read_int(path) + 1
    write_text(path, "%d" % n)
    return n


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def copy(src, dst):
    """Copies in small chunks (no allocation the size of the file: the heap is fragmented)."""
    buf = bytearray(128)
    try:
        with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                g.write(memoryview(buf)[:n])
    except OSError:
        return
    os.rename(dst + ".tmp", dst)


def same(a, b):
    """Whether two files hold the same bytes (False when either is missing); compared in small
    chunks."""
    x = bytearray(128)
    y = bytearray(128)
    try:
        with open(a, "rb") as f, open(b, "rb") as g:
            while True:
                n = f.readinto(x)
                if n != g.readinto(y) or x[:n] != y[:n]:
                    return False
                if not n:
                    return True
    except OSError:
        return False
