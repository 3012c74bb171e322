"""Console log of the node: one line per event on the serial console (what `meterlink
monitor` shows a technician). Format: `<uptime ms> <level> <tag>: <message>`; levels I, W, E,
and D (debug, only with DEBUG = True)."""

import time

DEBUG = False


def _emit(level, tag, msg, args):
    if args:
        msg = msg % args
    print("%d %s %s: %s" % (time.ticks_ms(), level, tag, msg))


def info(tag, msg, *args):
    _emit("I", tag, msg, args)


def warn(tag, msg, *args):
    _emit("W", tag, msg, args)


def error(tag, msg, *args):
    _emit("E", tag, msg, args)


def debug(tag, msg, *args):
    if DEBUG:
        _emit("D", tag, msg, args)
