# MicroPython-side test runner: runs under the MicroPython unix port, never under CPython.
#
#   micropython tests/mpy/run.py MODULE [NAME]
#
# Imports MODULE, calls every function whose name starts with "test_" (or only NAME), prints one
# line per test and a summary, and exits 1 if any failed. tests/test_micropython_side.py runs
# every tests/mpy/test_*.py this way with the 96 KB heap of a small ESP32.
import sys
import gc


def main(argv):
    if len(argv) < 2:
        print("usage: run.py MODULE [NAME]")
        sys.exit(2)
    mod = __import__(argv[1])
    only = argv[2] if len(argv) > 2 else None
    names = sorted(n for n in dir(mod) if n.startswith("test_") and (only is None or n == only))
    if not names:
        print("no tests in", argv[1])
        sys.exit(2)
    failed = 0
    for name in names:
        gc.collect()
        try:
            getattr(mod, name)()
            print("ok", name)
        except Exception as exc:  # noqa: BLE001 - report every failure, run the rest
            failed += 1
            print("FAIL", name)
            sys.print_exception(exc)
    print("%d passed, %d failed" % (len(names) - failed, failed))
    sys.exit(1 if failed else 0)


main(sys.argv)
