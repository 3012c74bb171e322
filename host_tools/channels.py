"""A node's channel values as the technician commands print them (`status`, `check`).

    channel_text(1, 2153)       -> "temperature 21.53 Cel"
    channel_text(4, 1200)       -> "water_volume 1.200 m3"

The names, units and scales are the gateway's channel table (gateway/channels.json), the one
the wire format defines, so a value reads on site as the platform will store it.
"""

from __future__ import annotations

from gateway.channels import default_table
from gateway.wire import senml_value


def channel_text(key, value) -> str:
    """`temperature 21.53 Cel` for a channel key and its scaled integer."""
    table = default_table()
    try:
        ch, inst = table.lookup(int(key))
    except (KeyError, ValueError, TypeError):
        return f"channel {key} = {value}"
    name = ch.name + (f":{inst}" if inst else "")
    if not isinstance(value, int):
        return f"{name} {value!r}"
    v = senml_value(value, ch.scale)
    text = f"{v:.{-ch.scale}f}" if ch.scale < 0 else str(v)
    return f"{name} {text} {ch.unit}".rstrip()
