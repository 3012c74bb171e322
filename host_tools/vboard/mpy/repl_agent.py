# The execution side of the virtual board's serial REPL. The bridge
# (host_tools/vboard/pty_repl.py) starts the unix port with `-c "import repl_agent"` in the
# node's flash folder, speaks the REPL protocol on the pty itself, and hands this loop one
# request at a time. Frozen into the build (unix_manifest.py): on a device the REPL is C code
# and takes no Python heap, so here it takes none either and the firmware gets the whole
# 96 KB. Not a module to import anywhere else: importing it runs the loop.
#
# Request on stdin:   <kind><length>\n<length bytes>
#     kind x  exec the bytes as a file (raw REPL, raw-paste)
#     kind s  compile them in "single" mode (the friendly REPL: expression values are printed)
#     kind f  run the file named by the bytes if it exists (boot.py, main.py), like pyexec_file
# Before running it, the agent writes 0x05 to the control pipe: from then on a SIGINT lands in
# the request (the bridge holds a Ctrl-C back until then, so it never cuts a request being
# read in half). The code's output goes to stdout as it is printed. When it ends, the control pipe ($REPL_CTL_FD) gets the traceback
# text (empty when none), then 0x04 and one status byte: 0 ok, 1 exception, 2 SystemExit
# (the device soft-resets on it).
#
# SIGINT raises KeyboardInterrupt in the running code, as Ctrl-C does on the device; one that
# lands while the loop waits for a request is swallowed, so every request gets exactly one
# answer and nothing else is ever written to the control pipe.

import os
import sys

_ctl = open(int(os.getenv("REPL_CTL_FD")), "wb")
_in = sys.stdin.buffer
_g = {"__name__": "__main__"}


def _read(n):
    b = b""
    while len(b) < n:
        c = _in.read(n - len(b))
        if not c:
            raise SystemExit
        b += c
    return b


def _answer(st, e):
    while True:
        try:
            if e is not None:
                sys.print_exception(e, _ctl)
            _ctl.write(b"\x04" + st)
            return
        except KeyboardInterrupt:
            e = None


while True:
    try:
        _h = _in.readline()
        if not _h:
            break
        _k = _h[0]
        _s = _read(int(_h[1:]))
    except KeyboardInterrupt:
        continue
    _st = b"0"
    _e = None
    try:
        _ctl.write(b"\x05")
        if _k == 0x66:
            _s = _s.decode()
            try:
                open(_s).close()
            except OSError:
                _s = None
            if _s:
                execfile(_s, _g)
        elif _k == 0x73:
            exec(compile(_s, "<stdin>", "single"), _g)
        else:
            exec(compile(_s, "<stdin>", "exec"), _g)
    except SystemExit:
        _st = b"2"
    except BaseException as _x:
        _st = b"1"
        _e = _x
    _s = None
    _answer(_st, _e)
    _e = None
