# Runs first on every reset. Kept minimal: everything that can fail lives in main.py, so a bad
# deployment still leaves a working REPL for `mpremote` and `meterlink` to recover the node.
import gc

gc.collect()
