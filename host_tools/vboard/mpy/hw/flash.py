"""esp32.NVS and esp32.Partition of the virtual board, loaded on first use (see `esp32`)."""

import errno

import hw

# ---------------------------------------------------------------------------------- NVS
_ERR = {0x1102: "ESP_ERR_NVS_NOT_FOUND", 0x1109: "ESP_ERR_NVS_KEY_TOO_LONG",
        0x110C: "ESP_ERR_NVS_INVALID_LENGTH"}
_nvs = [None]  # all namespaces: {ns: {key: ["i32", n] | ["blob", hex]}}, uncommitted included


def _esp_err(code):
    return OSError(-code, _ERR[code])


def _power_on(b):
    _nvs[0] = None


hw.on_configure(_power_on)


class NVS:
    def __init__(self, namespace):
        if not isinstance(namespace, str):
            raise TypeError("can't convert to str implicitly")
        if len(namespace) > 15:
            raise _esp_err(0x1109)
        self._ns = namespace

    def __repr__(self):
        return "<NVS namespace>"

    def _space(self):
        if _nvs[0] is None:
            _nvs[0] = hw.read_json(hw.board().file("nvs.json")) or {}
        return _nvs[0].setdefault(self._ns, {})

    def _get(self, key, kind):
        if len(key) > 15:
            raise _esp_err(0x1109)
        v = self._space().get(key)
        if v is None or v[0] != kind:
            raise _esp_err(0x1102)
        return v[1]

    def _set(self, key, kind, value):
        if len(key) > 15:
            raise _esp_err(0x1109)
        self._space()[key] = [kind, value]

    def set_i32(self, key, value):
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise OverflowError("overflow converting long int to machine word")
        self._set(key, "i32", int(value))

    def get_i32(self, key):
        return self._get(key, "i32")

    def set_blob(self, key, value):
        self._set(key, "blob", bytes(value).hex())

    def get_blob(self, key, buffer):
        data = bytes.fromhex(self._get(key, "blob"))
        if len(buffer) < len(data):
            raise _esp_err(0x110C)
        buffer[:len(data)] = data
        return len(data)

    def erase_key(self, key):
        if len(key) > 15:
            raise _esp_err(0x1109)
        space = self._space()
        if key not in space:
            raise _esp_err(0x1102)
        del space[key]

    def commit(self):
        path = hw.board().file("nvs.json")
        if path is not None and _nvs[0] is not None:
            hw.write_json(path, _nvs[0])


# ---------------------------------------------------------------------------------- Partition
# The partition table is the one the image flashed on the board brought: $VBOARD_DIR/
# partitions.json, [[type, subtype, address, size, label], ...] (written by the launcher for
# the meterlink image from boards/idf/<board>/partitions.csv: two OTA app slots), else the 4 MiB
# single-app layout of a stock MicroPython image. App partitions hold their bytes in
# $VBOARD_DIR/<label>.bin (missing bytes read as erased, 0xFF). Writes are NOR flash writes:
# bits only go from 1 to 0 (new = old & data), so writing without erasing first corrupts, as on
# the chip; writeblocks(block, buf) without an offset erases the blocks first, ioctl(6, block)
# erases one 4 KiB block.
#
# otadata ($VBOARD_DIR/otadata.json: {"boot": label, "state": ..., "prev": label, "running":
# label}) is what the ESP-IDF bootloader keeps with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE:
# set_boot() verifies the image in the partition as esp_ota_set_boot_partition() does (magic
# 0xE9, the chip id, segments inside the partition, the XOR checksum, the appended SHA-256;
# OSError(-0x1503, "ESP_ERR_OTA_VALIDATE_FAILED") otherwise) and marks it "new"; the launcher's
# bootloader step (host_tools/vboard/bootloader.py) starts a "new" app as "pending_verify" and,
# at the next start, rolls a "pending_verify" app that was not marked valid back to "prev";
# mark_app_valid_cancel_rollback() marks the running app "valid".
_STOCK = ((0, 0, 0x10000, 0x1F0000, "factory"), (1, 2, 0x9000, 0x6000, "nvs"),
          (1, 1, 0xF000, 0x1000, "phy_init"), (1, 0x81, 0x200000, 0x200000, "vfs"))
_CHIP_ID = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9, "esp32c6": 13}
_BLOCK = 4096


def _table():
    t = hw.read_json(hw.board().file("partitions.json"))
    return [tuple(p) for p in t] if t else list(_STOCK)


def _ota_slots():
    return [p[4] for p in _table() if p[0] == 0 and 0x10 <= p[1] < 0x20]  # app, ota_0..ota_15


def _otadata():
    d = hw.read_json(hw.board().file("otadata.json")) or {}
    ota = _ota_slots()
    first = ota[0] if ota else "factory"
    d.setdefault("boot", first)
    d.setdefault("running", d["boot"])
    d.setdefault("state", "valid")
    return d


def _validate_failed():
    return OSError(-0x1503, "ESP_ERR_OTA_VALIDATE_FAILED")


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        if id in (Partition.BOOT, Partition.RUNNING):
            d = _otadata()
            id = d["running"] if id == Partition.RUNNING else d["boot"]
        for p in _table():
            if p[4] == id:
                self._info = p + (False,)
                break
        else:
            raise OSError(errno.ENOENT)
        self._block_size = block_size

    def __repr__(self):
        i = self._info
        return "<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=%d>" % i

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        return [Partition(p[4], block_size) for p in _table()
                if p[0] == type and subtype in (0xFF, p[1]) and label in (None, p[4])]

    def info(self):
        return self._info

    def _path(self):
        return hw.board().file(self._info[4] + ".bin")

    def _read(self, offset, n):
        if offset < 0 or offset + n > self._info[3]:
            raise OSError(-0x102, "ESP_ERR_INVALID_ARG")
        try:
            with open(self._path(), "rb") as f:
                f.seek(offset)
                data = f.read(n)
        except OSError:
            data = b""
        return data + b"\xff" * (n - len(data))

    def _write(self, offset, data, erase=False):
        old = b"\xff" * len(data) if erase else self._read(offset, len(data))
        new = bytes(a & b for a, b in zip(old, data))
        path = self._path()
        try:
            f = open(path, "r+b")
        except OSError:
            f = open(path, "wb")
        with f:
            f.seek(0, 2)
            end = f.tell()
            if end < offset:
                f.write(b"\xff" * (offset - end))
            f.seek(offset)
            f.write(new)

    def readblocks(self, block_num, buf, offset=0):
        buf[:] = self._read(block_num * self._block_size + offset, len(buf))

    def writeblocks(self, block_num, buf, offset=None):
        start = block_num * self._block_size
        if offset is None:
            self._read(start, len(buf))  # range check
            self._write(start, buf, erase=True)
        else:
            self._write(start + offset, buf)

    def ioctl(self, cmd, arg):
        if cmd in (1, 2, 3):
            return 0
        if cmd == 4:
            return self._info[3] // self._block_size
        if cmd == 5:
            return self._block_size
        if cmd == 6:
            self._read(arg * self._block_size, self._block_size)  # range check
            self._write(arg * self._block_size, b"\xff" * self._block_size, erase=True)
            return 0
        return None

    def get_next_update(self):
        ota = _ota_slots()
        if not ota:
            raise OSError(errno.ENOENT)
        here = self._info[4]
        nxt = ota[(ota.index(here) + 1) % len(ota)] if here in ota else ota[0]
        return Partition(nxt, self._block_size)

    def set_boot(self):
        if self._info[0] != 0:
            raise OSError(-0x102, "ESP_ERR_INVALID_ARG")
        self._verify()
        d = _otadata()
        d.update(boot=self._info[4], state="new", prev=d["running"])
        hw.write_json(hw.board().file("otadata.json"), d)

    def _verify(self):
        h = self._read(0, 24)
        if h[0] != 0xE9 or h[12] | (h[13] << 8) != _CHIP_ID.get(hw.board().chip, -1):
            raise _validate_failed()
        import hashlib

        pos, csum, sha = 24, 0xEF, hashlib.sha256(h)
        for _ in range(h[1]):
            seg = self._read(pos, 8)
            n = seg[4] | seg[5] << 8 | seg[6] << 16 | seg[7] << 24
            if pos + 8 + n > self._info[3]:
                raise _validate_failed()
            sha.update(seg)
            pos += 8
            while n:  # in pieces: the bootloader's RAM is not the node's heap
                data = self._read(pos, min(n, 512))
                for b in data:
                    csum ^= b
                sha.update(data)
                pos += len(data)
                n -= len(data)
        pad = 15 - pos % 16
        tail = self._read(pos, pad + 1)
        sha.update(tail)
        pos += pad + 1
        if tail[-1] != csum:
            raise _validate_failed()
        if h[23] == 1 and self._read(pos, 32) != sha.digest():
            raise _validate_failed()

    @staticmethod
    def mark_app_valid_cancel_rollback():
        d = _otadata()
        if d["state"] == "pending_verify":
            d["state"] = "valid"
            hw.write_json(hw.board().file("otadata.json"), d)
