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
# Control pipe ($REPL_CTL_FD): 0x05 when the request starts running; when it ends, the
# traceback text (empty when none), 0x04 and one status byte: 0 ok, 1 exception, 2 SystemExit
# (the device soft-resets on it). The code's own output goes to stdout as it is printed.
#
# Ctrl-C is SIGINT, which raises KeyboardInterrupt in the running code as on the device. The
# bridge sends it only after 0x05, but it may land a moment later, in this loop. MicroPython,
# as built here (host_tools/toolchain/unix_variant), raises a pending KeyboardInterrupt only
# at a jump, so every step below stores its result with no jump between the call and the
# store, keeps it in a global, and the loop resumes where it was: a request is never lost or
# cut in half, and each gets exactly one answer.

import os
import sys

_ctl = open(int(os.getenv("REPL_CTL_FD")), "wb")
_in = sys.stdin.buffer
_g = {"__name__": "__main__"}
_KBD = b"Traceback (most recent call last):\nKeyboardInterrupt: \n\x041"


def _run(k, s):
    try:
        _ctl.write(b"\x05")
        if k == 0x66:
            s = s.decode()
            try:
                open(s).close()
            except OSError:
                s = None
            if s:
                execfile(s, _g)  # noqa: F821 - a MicroPython builtin
        elif k == 0x73:
            exec(compile(s, "<stdin>", "single"), _g)
        else:
            exec(compile(s, "<stdin>", "exec"), _g)
    except SystemExit:
        return b"\x042"
    except BaseException as e:
        try:
            sys.print_exception(e, _ctl)
        except BaseException:
            pass
        return b"\x041"
    return b"\x040"


_h = b""  # the header of the request being read
_s = None  # its payload
_taken = False  # a request was taken and has no answer yet
_ans = None  # the answer to write
while True:
    try:
        if _ans is not None:
            _ctl.write(_ans)
            _ans = None
        if not _h:
            _h = _in.readline()
            if not _h:
                break
        if _s is None:
            _s = _in.read(int(_h[1:]))
        _taken = True
        _ans = _run(_h[0], _s)
        _taken = False
        _h = b""
        _s = None
    except KeyboardInterrupt:
        if _taken and _ans is None:
            _ans = _KBD
        if _ans is not None:
            _taken = False
            _h = b""
            _s = None
