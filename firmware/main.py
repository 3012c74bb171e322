# Runs after boot.py on every reset and wake-up. Ctrl-C stops the node and leaves the REPL to
# the technician (`import node; node.diagnostics()`).
# appslot picks the code: the image's firmware, or an app update (docs/ota.md), which it rolls
# back when the update cannot start.
import sys

import appslot

app = appslot.select()
del sys.modules["appslot"]
try:
    import bootinfo

    boot = bootinfo.start()
    del sys.modules["bootinfo"]
    if boot is not None:
        boot.app = app
        import node
except Exception as exc:
    if app is not None and "trial" in app:
        import appslot

        appslot.fail("failed to start: %r" % (exc,))  # resets: the next start rolls back
    raise
if boot is not None:
    node.run(boot)
