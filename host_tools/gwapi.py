"""The technician tools' client of the gateway's HTTP API (`provision --gateway`, `check
--gateway`): one request function, the bearer token, and the technician's errors.

The token: `--gateway-token-file FILE` (the gateway's `api-token`, or any file whose first
line is the token), else the environment's METERLINK_GATEWAY_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from meterlink_common import EXIT_INPUT, UserError

TOKEN_ENV = "METERLINK_GATEWAY_TOKEN"


def add_token_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway-token-file", type=Path, metavar="FILE",
                        help=f"the gateway API's bearer token (its api-token file; default: "
                             f"${TOKEN_ENV})")


def token(args: argparse.Namespace) -> str | None:
    path = getattr(args, "gateway_token_file", None)
    if path is not None:
        try:
            return path.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise UserError(f"--gateway-token-file {path}: {getattr(exc, 'strerror', None) or 'empty'}",
                            exit_code=EXIT_INPUT) from exc
    return os.environ.get(TOKEN_ENV) or None


def call(method: str, url: str, body: dict | None = None, *, token: str | None,
         timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON body) of one request; UserError when the gateway cannot be reached or
    refuses the token. Other HTTP errors come back as their status and body."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        if exc.code == 401:
            raise UserError(f"the gateway at {url} wants its API token: pass "
                            f"--gateway-token-file (the gateway's api-token file) or set "
                            f"{TOKEN_ENV}" + (" (the one given is wrong)" if token else "")) from exc
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"error": text[:300]}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserError(f"cannot reach the gateway at {url} ({exc}): is it running, and is "
                        f"[api] enabled in its config?") from exc
