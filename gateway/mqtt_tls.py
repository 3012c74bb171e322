"""TLS for the gateway's paho clients (the broker connection, `gateway send`, the mqtt sink):
one place that turns the config's `tls`, `ca_file`, `cert_file`, `key_file` into paho's
`tls_set`, so the three connections check the broker the same way.

The broker's certificate is always verified, name included (paho checks it against the host
it connects to): against `ca_file` (the fleet CA, `meterlink pki`) or the system's CAs. With
`cert_file`/`key_file` the client presents its own certificate (a broker with
`require_certificate`).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


def apply(client: Any, *, tls: bool, ca_file: Path | None = None, cert_file: Path | None = None,
          key_file: Path | None = None, where: str = "mqtt") -> None:
    """Configures TLS on a paho client when `tls` is set (or any file is given)."""
    if not (tls or ca_file or cert_file):
        return
    for key, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{where}.{key}", "must be a readable file", got=str(path))
    client.tls_set(ca_certs=str(ca_file) if ca_file else None,
                   certfile=str(cert_file) if cert_file else None,
                   keyfile=str(key_file) if key_file else None,
                   cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
