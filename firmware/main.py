# Runs after boot.py on every reset and wake-up. Ctrl-C stops the node and leaves the REPL to
# the technician (`import node; node.diagnostics()`).
import sys

import bootinfo

boot = bootinfo.start()
del sys.modules["bootinfo"]
if boot is not None:
    import node

    node.run(boot)
