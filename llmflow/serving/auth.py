"""API keys: where they come from and how a request's key is checked.

Keys come from ``--api-key`` (repeatable), ``LLMFLOW_API_KEY`` and ``--api-key-file`` (one key a line; blank lines
and lines starting with ``#`` are skipped). A request sends ``Authorization: Bearer <key>``, as the ``openai``
client does. Keys are compared in constant time (``hmac.compare_digest``, against every key, with no early exit)
and are never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

KEY_ENV = "LLMFLOW_API_KEY"


def load_keys(keys: Iterable[str] = (), key_file: Path | None = None, environ: dict[str, str] | None = None) -> tuple:
    """Every accepted key, as bytes; empty when none is set (the endpoint is then open)."""
    environ = os.environ if environ is None else environ
    found = [key.strip() for key in keys]
    if environ.get(KEY_ENV):
        found.append(environ[KEY_ENV].strip())
    if key_file is not None:
        lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        found += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if any(not key for key in found):
        raise ValueError("an API key must not be empty")
    return tuple(key.encode() for key in found)


def bearer(header: str | None) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` header, or ``None``."""
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    return key.strip().encode() if scheme.lower() == "bearer" and key.strip() else None


def authorized(header: str | None, keys: tuple) -> bool:
    """Whether ``header`` carries one of ``keys``; always true when there are no keys."""
    if not keys:
        return True
    given = bearer(header)
    if given is None:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
