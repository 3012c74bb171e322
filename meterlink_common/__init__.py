"""What the gateway and the technician tools share, and nothing else.

    errors   MeterlinkError (base of every error meterlink raises on purpose), UserError (a
             command-line failure) and the exit codes of every `meterlink` command
    files    write_atomic, write_json_atomic: a file replaced so that readers never see half

`gateway` and `host_tools` both import this package and it imports neither, so the technician
tools need none of the gateway's internals for their errors and files (importing `gateway`
loads its config, decoder and channel table), and the gateway none of the tools'. What
belongs here is what both sides use the same way; an error or a helper only one side raises
or calls stays on that side (the gateway's errors are in gateway/errors.py).

    from meterlink_common import EXIT_INPUT, UserError, write_json_atomic
"""

from meterlink_common.errors import (EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK,
                                     MeterlinkError, UserError)
from meterlink_common.files import write_atomic, write_json_atomic

__all__ = [
    "EXIT_ERROR", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "MeterlinkError", "UserError",
    "write_atomic", "write_json_atomic",
]
