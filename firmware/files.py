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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def bump(path):
    n = read_int(path) + 1
    write_text(path, "%d" % n)
    return n


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def copy(src, dst):
    text = read_text(src)
    if text is not None:
        write_text(dst, text)
