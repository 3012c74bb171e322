"""`make bench`: the node runtime's heap over 1000 cycles with four sensors, against the
budget (the firmware's 96 KB) measured in the same run."""

from node_heap import run

r = run(1000, 4)
kb = 1024
print("node heap (4 x BME280, 1000 read+queue+publish cycles, xtensawin .mpy)")
print(f"  firmware heap budget      {r['firmware_budget'] / kb:6.1f} KB "
      f"(+ {r['vboard_allowance'] / kb:.1f} KB measured for the virtual board itself)")
print(f"  live peak (after gc)      {r['firmware_live_peak'] / kb:6.1f} KB   "
      f"ratio {r['firmware_live_peak'] / r['firmware_budget']:.2f} of budget")
print(f"  least free after gc       {r['min_free_after_gc'] / kb:6.1f} KB")
print(f"  readings sent             {r['sent']} (queue left {r['queued']}, "
      f"sensor errors {r['sensor_errors']})")
