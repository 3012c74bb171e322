# Shared by the MicroPython-side driver tests: build a node adapter from one `sensors` entry
# exactly as a config file would (validated by sensors.validate_hw), and expect an OSError
# whose message names what went wrong. The config modules load only when an adapter is built,
# so a test of a bare driver does not pay their heap.


def adapter(entry, base=None, **sections):
    """The adapter for `base` updated with `entry`, with the other config `sections` (e.g.
    uart=...) beside it; the config must validate."""
    import config
    import sensors

    spec = dict(base or {})
    spec.update(entry)
    cfg = dict(sections)
    cfg["sensors"] = [spec]
    c = config._Checker()
    out = {}
    sensors.validate_hw(c, cfg, out)
    assert not c.errors, c.errors
    return sensors.create(out["sensors"][0], sensors.Hardware(out))


def expect_oserror(fn, *needles):
    """Calls fn(); it must raise OSError with every needle in its message (returned, to
    check more, e.g. its errno)."""
    try:
        fn()
    except OSError as exc:
        for n in needles:
            assert n in str(exc), (n, str(exc))
        return exc
    raise AssertionError("no OSError")
