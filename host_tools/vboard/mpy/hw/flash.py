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
# (type, subtype, address, size, label, encrypted) of the 4 MiB single-app layout
_TABLE = ((1, 2, 0x9000, 0x6000, "nvs", False),
          (1, 1, 0xF000, 0x1000, "phy_init", False),
          (0, 0, 0x10000, 0x1F0000, "factory", False),
          (1, 0x81, 0x200000, 0x200000, "vfs", False))


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        if id in (Partition.BOOT, Partition.RUNNING):
            self._info = _TABLE[2]
        else:
            for p in _TABLE:
                if p[4] == id:
                    self._info = p
                    break
            else:
                raise OSError(errno.ENOENT)
        self._block_size = block_size

    def __repr__(self):
        i = self._info
        return "<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=%d>" % i

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        return [Partition(p[4], block_size) for p in _TABLE
                if p[0] == type and subtype in (0xFF, p[1]) and label in (None, p[4])]

    def info(self):
        return self._info

    def get_next_update(self):
        raise OSError(errno.ENOENT)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        pass
