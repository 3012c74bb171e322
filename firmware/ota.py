"""Over-the-air updates, the node's side: the `ota` command (docs/ota.md).

The gateway sends an app bundle (the node's .mpy modules, host_tools/bundle.py; kind "app")
or a firmware image (the ESP-IDF app image of `make image`; kind "image") in chunks on `k`;
the node answers each on `a` with the chunk it wants next, so either side can stop at any
point (a power cut, a lost link, a gateway restart) and the transfer goes on from where the
node's flash says it is:

    {"cmd": "ota", "op": "begin", "v": "0.4.0", "size": 61440, "sha": <32 bytes>, "cs": 512,
     "chips": ["esp32", "esp32s3"], "mpy": [6, 3], "dl": 300}   -> {"next": 0, "chunks": 120}
    {"cmd": "ota", "op": "chunk", "n": 0, "d": <512 bytes>, "h": <SHA-256 of d>, "s": <sha[:8]>}
                                                                   -> {"next": 1}

A bundle is written to `ota.bin` at each chunk's offset, an image to the idle OTA partition
(esp32.Partition.get_next_update(): each 4 KiB block erased as the first chunk reaching it is
written), and the progress to `ota.json` after the data, so a chunk is never counted before it
is on flash. After the last chunk the node checks the whole SHA-256; a bundle is unpacked
into the slot that is not running and `app.json` switched atomically, an image is made the
boot partition (set_boot(), which verifies it); then the node restarts. The update is on
trial until the node is healthy, and is rolled back if it does not get there
(firmware/appslot.py; an image by the bootloader). The queue of readings is never touched:
they go on being read, queued and sent throughout.

Every refusal says what was wrong (`chunk 12: SHA-256 mismatch`, `bundle for esp32c3, this
node is esp32`, `0.3.0 is not newer than the running 0.4.0`, ...) and the node goes on
running the code it has. Loaded only while an `ota` message is handled (heap).
"""

import json
import os
import sys

import log
from files import read_text, remove, write_text
from status import firmware_version, image_version  # (node.downlink() unloads both after)

STATE = "ota.json"
DATA = "ota.bin"
_MAX_SIZE = 1 << 20
_HEADER_MAX = 4096
_PIECE = 512  # bytes read or written at a time while checking and unpacking
_NOT_IN_BUNDLE = ("appslot.mpy", "boot.py", "main.py")


class Refused(Exception):
    """An `ota` message refused: the reason, and the chunk the node wants next (None: send
    begin again)."""

    def __init__(self, reason, next=None):
        super().__init__(reason)
        self.next = next


def _hex(b):
    return "".join("%02x" % x for x in b)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def version_tuple(v):
    t = ()
    if isinstance(v, str):
        try:
            t = tuple(int(x) for x in v.split("."))
        except ValueError:
            pass
    if len(t) != 3:
        raise Refused("v must be a version a.b.c: got %r" % (v,))
    return t


def _partition(label=None):
    import esp32

    return esp32.Partition(label or esp32.Partition.RUNNING)


def chip(node):
    """This node's chip: board.json's (written by provisioning), else MicroPython's own
    description (`... with ESP32S3`)."""
    c = node.hw.board_info().get("chip")
    if c:
        return c
    m = sys.implementation._machine.lower().replace("-", "")
    for c in ("esp32s3", "esp32s2", "esp32c3", "esp32c6", "esp32"):
        if m.endswith(c):
            return c
    return None


def mpy_version():
    m = sys.implementation._mpy
    return [m & 0xFF, (m >> 8) & 3]


def _state():
    try:
        return json.loads(read_text(STATE) or "null")
    except ValueError:
        return None


def _chunks(st):
    return (st["size"] + st["cs"] - 1) // st["cs"]


def handle(node, msg):
    """Carries out one `ota` message; returns the answer's fields (merged into the ack), or
    raises Refused with the reason."""
    op = msg.get("op")
    if op == "begin":
        return begin(node, msg)
    if op == "chunk":
        return chunk(node, msg)
    if op == "abort":
        remove(DATA)
        remove(STATE)
        return {"op": "abort"}
    raise Refused('op must be begin, chunk or abort: got %r' % (op,))


def _check_target(node, chips, mpy, what="bundle"):
    mine = chip(node)
    if not isinstance(chips, list) or not chips or \
            not all(isinstance(c, str) for c in chips):
        raise Refused("chips must be a list of chip names")
    if mine not in chips:
        raise Refused("%s for %s, this node is %s" % (what, "/".join(chips), mine or "an unknown chip (no chip in board.json)"))
    if what == "bundle" and mpy != mpy_version():
        raise Refused("bundle's .mpy version %r, this node runs %r" % (mpy, mpy_version()))


def begin(node, msg):
    v, size, sha, cs, dl = msg.get("v"), msg.get("size"), msg.get("sha"), msg.get("cs"), msg.get("dl", 300)
    new = version_tuple(v)
    if not _int(size) or not 64 <= size <= _MAX_SIZE:
        raise Refused("size must be an integer 64-%d" % _MAX_SIZE)
    if not isinstance(sha, bytes) or len(sha) != 32:
        raise Refused("sha must be the bundle's SHA-256 (32 bytes)")
    if not _int(cs) or not 64 <= cs <= 768:
        raise Refused("cs must be an integer 64-768 (bytes per chunk)")
    if not _int(dl) or not 10 <= dl <= 3600:
        raise Refused("dl must be an integer 10-3600 (seconds to become healthy)")
    kind = msg.get("kind", "app")
    if kind not in ("app", "image"):
        raise Refused("kind must be app or image: got %r" % (kind,))
    part = None
    if kind == "image":
        _check_target(node, msg.get("chips"), None, "image")
        try:
            part = _partition().get_next_update().info()
        except OSError:
            raise Refused("this node's image has a single app partition (a stock MicroPython "
                          "image): flash the meterlink image over USB once (meterlink flash)")
        if size > part[3]:
            raise Refused("the image is %d bytes, partition %s holds %d" % (size, part[4], part[3]))
        cur = image_version()
    else:
        _check_target(node, msg.get("chips"), msg.get("mpy"))
        cur = firmware_version(node)
    if node.app_trial:  # the answer comes when it is healthy or rolled back
        trial = node.app.get("v") or node.app.get("img")
        if trial != v:
            raise Refused("update %s is on trial: wait for its answer" % trial)
        return {"op": "installed", "v": v, "next": (size + cs - 1) // cs}
    st = _state()
    if cur is not None and new == version_tuple(cur) and not node.app_trial:
        return {"op": "done", "v": cur, "have": True}  # already running it
    if cur is not None and new <= version_tuple(cur) and msg.get("force") is not True:
        raise Refused("%s is not newer than the running %s (force=true installs it anyway)"
                      % (v, cur))
    if read_text("ota.bad") == v and msg.get("force") is not True:
        raise Refused("%s was rolled back on this node (force=true tries it again)" % v)
    hexsha = _hex(sha)
    if st is None or st.get("sha") != hexsha or st.get("cs") != cs or st.get("size") != size:
        st = {"sha": hexsha, "size": size, "cs": cs, "v": v, "n": 0, "dl": dl,
              "id": msg.get("id"), "part": part and part[4]}
        remove(DATA)
        if part is None:
            _free_space(size)
        write_text(STATE, json.dumps(st))
        log.info("ota", "receiving %s: %d bytes in %d chunks", v, size, _chunks(st))
    else:
        st["id"] = msg.get("id")
        st["dl"] = dl
        write_text(STATE, json.dumps(st))
        log.info("ota", "resuming %s at chunk %d of %d", v, st["n"], _chunks(st))
    if st["n"] == _chunks(st):
        return finish(node, st)
    return {"op": "begin", "next": st["n"], "chunks": _chunks(st)}


def _free_space(size):
    try:
        s = os.statvfs(".")
    except (AttributeError, OSError):
        return
    free = s[0] * s[4]  # f_bsize * f_bavail: MicroPython's statvfs() is a plain tuple
    need = 2 * size + 8192  # the bundle and its unpacked modules
    if free < need:
        raise Refused("not enough flash: the bundle needs %d bytes free, %d are" % (need, free))


def chunk(node, msg):
    import hashlib

    st = _state()
    if st is None:
        raise Refused("no transfer in progress: send begin first")
    n, d, h = msg.get("n"), msg.get("d"), msg.get("h")
    s = msg.get("s")
    if not isinstance(s, bytes) or _hex(s) != st["sha"][:16]:
        raise Refused("chunk of another bundle (s is not the first 8 bytes of the transfer's "
                      "sha)", st["n"])
    total = _chunks(st)
    if not _int(n) or not 0 <= n < total:
        raise Refused("n must be a chunk number 0-%d" % (total - 1), st["n"])
    if n != st["n"]:
        return {"op": "chunk", "next": st["n"]}  # a repeat or a gap: say where we are
    want = min(st["cs"], st["size"] - n * st["cs"])
    if not isinstance(d, bytes) or len(d) != want:
        raise Refused("chunk %d: %s bytes, expected %d" % (
            n, len(d) if isinstance(d, bytes) else "no", want), n)
    if hashlib.sha256(d).digest() != h:
        raise Refused("chunk %d: SHA-256 mismatch (corrupted on the way)" % n, n)
    off = n * st["cs"]
    if st["part"]:
        p = _partition(st["part"])
        b = (off + 4095) // 4096  # erase each block that starts inside this chunk
        while b * 4096 < off + len(d):
            p.ioctl(6, b)
            b += 1
        p.writeblocks(off // 4096, d, off % 4096)
    else:
        with open(DATA, "r+b" if n else "wb") as f:
            f.seek(off)
            f.write(d)
    st["n"] = n + 1
    write_text(STATE, json.dumps(st))  # after the data: a chunk counts once it is on flash
    if st["n"] < total:
        return {"op": "chunk", "next": st["n"]}
    return finish(node, st)


def _sha_of_data(size, part=None):
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(_PIECE)
    f = None if part else open(DATA, "rb")
    p = _partition(part) if part else None
    try:
        off = 0
        while off < size:
            piece = memoryview(buf)[:min(size - off, _PIECE)]
            if p:
                p.readblocks(off // 4096, piece, off % 4096)
            elif f.readinto(piece) != len(piece):
                break  # shorter than announced: the hash will not match
            h.update(piece)
            off += len(piece)
    finally:
        if f:
            f.close()
    return _hex(h.digest())


def finish(node, st):
    """The whole bundle is on flash: checked, unpacked into the idle slot, switched to."""
    got = _sha_of_data(st["size"], st["part"])
    if got != st["sha"]:
        remove(DATA)
        remove(STATE)
        raise Refused("%s SHA-256 is %s, expected %s: transfer discarded, send it again"
                      % ("image" if st["part"] else "bundle", got[:16], st["sha"][:16]))
    if st["part"]:
        return _install_image(node, st)
    run = (node.app or {}).get("run")
    slot = "app1" if run == "app0" else "app0"
    try:
        _unpack(node, slot, st["size"], st["v"])
    except Refused:
        remove(DATA)
        remove(STATE)
        raise
    app = {"run": slot, "v": st["v"], "prev": run, "pv": firmware_version(node), "trial": 0,
           "dl": st["dl"], "id": st["id"]}
    write_text("app.json", json.dumps(app))  # the switch: atomic
    remove(DATA)
    remove(STATE)
    return _installed(node, st, slot)


def _installed(node, st, where):
    node.rtc.clear_crashes()  # an operator's new start, like `reboot`: crashes before do not count
    log.info("ota", "%s installed in %s; restarting to try it", st["v"], where)
    node.restart_after_ack = True
    return {"op": "installed", "v": st["v"], "next": _chunks(st)}


def _install_image(node, st):
    """The image is in the idle partition: made the boot partition (set_boot() verifies it,
    as the bootloader will), on trial from the next start (appslot.py, `img.json`)."""
    p = _partition(st["part"])
    try:
        p.set_boot()
    except OSError as exc:
        remove(STATE)
        raise Refused("the image does not verify (%r): not installed" % (exc,))
    remove(STATE)
    pv = image_version()
    if read_text("app.json") is not None:  # an app update would shadow the image's code
        os.rename("app.json", "app.json.img")
    write_text("img.json", json.dumps({"v": st["v"], "id": st["id"], "dl": st["dl"],
                                       "to": st["part"], "pv": pv}))
    return _installed(node, st, st["part"])


def _unpack(node, slot, size, v):
    """Bundle layout (host_tools/bundle.py): b"MLB1", the header's length (4 bytes, big
    endian), the header (CBOR: v, chips, mpy, files [[name, size], ...]), the files' bytes."""
    import cbordec

    with open(DATA, "rb") as f:
        head = f.read(8)
        if len(head) != 8 or head[:4] != b"MLB1":
            raise Refused("not a meterlink bundle (offset 0: magic is not MLB1)")
        hlen = int.from_bytes(head[4:8], "big")
        if not 1 <= hlen <= _HEADER_MAX or 8 + hlen > size:
            raise Refused("offset 4: header length %d out of range" % hlen)
        try:
            header = cbordec.decode(f.read(hlen))
        except cbordec.DecodeError as exc:
            raise Refused("header (offset 8): %s" % exc)
        if not isinstance(header, dict) or not isinstance(header.get("files"), list):
            raise Refused("header (offset 8): a map with files is expected")
        if header.get("v") != v:
            raise Refused("header: the bundle is version %r, begin said %s" % (header.get("v"), v))
        _check_target(node, header.get("chips"), header.get("mpy"))
        pos = 8 + hlen
        for e in header["files"]:
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _int(e[1])):
                raise Refused("header: files entries must be [name, size]")
            name, n = e
            if "/" in name or not name.endswith(".mpy") or name in _NOT_IN_BUNDLE:
                raise Refused("header: %s cannot be part of a bundle" % name)
            pos += n
        if pos != size:
            raise Refused("header lists %d bytes of files, the bundle has %d" % (pos - 8 - hlen, size - 8 - hlen))
        _clear(slot)
        buf = bytearray(_PIECE)
        for name, n in header["files"]:
            with open(slot + "/" + name, "wb") as g:
                while n:
                    k = f.readinto(memoryview(buf)[:min(n, _PIECE)])
                    g.write(memoryview(buf)[:k])
                    n -= k


def _clear(slot):
    try:
        names = os.listdir(slot)
    except OSError:
        os.mkdir(slot)
        return
    for name in names:
        os.remove(slot + "/" + name)
