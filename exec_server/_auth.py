"""How a WebSocket upgrade proves who it is: the bearer token it carries, and where it comes from.

The tokens themselves (files, names, checks, reload) are ``_tokens``; this module reads what
a request presents, and decides whether a browser ``Origin`` may connect at all.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from ._tokens import DEFAULT_TOKEN_FILE, TOKEN_ENV, load_token_file

__all__ = [
    "DEFAULT_TOKEN_FILE",
    "SUBPROTOCOL_PREFIX",
    "TOKEN_ENV",
    "load_or_create_token",
    "origin_allowed",
    "presented_token",
    "token_matches",
]

SUBPROTOCOL_PREFIX: Final = "bearer."
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


def load_or_create_token(token_file: Path | None) -> tuple[str, Path | None]:
    """The token: ``EXEC_SERVER_TOKEN`` if set, else the (checked) file's content, else a new one.

    A new token (43 URL-safe characters) is written to the file with mode 0600.

    Returns:
        The token and the file it lives in (None when it came from the environment).

    Raises:
        TokenFileError: the file fails the checks of ``_tokens.check_private_file`` or holds
            a token shorter than 32 characters.
    """
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return from_env, None
    path = (token_file or DEFAULT_TOKEN_FILE).expanduser()
    return load_token_file(path, create=True), path


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison (``hmac.compare_digest``)."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def presented_token(headers: list[tuple[bytes, bytes]], subprotocols: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The token a WebSocket upgrade request carries.

    Returns:
        The token (from ``Authorization: Bearer`` or a ``bearer.<token>`` subprotocol) and
        the subprotocol to echo when it came from one.
    """
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip(), None
    for subprotocol in subprotocols:
        if subprotocol.startswith(SUBPROTOCOL_PREFIX):
            return subprotocol[len(SUBPROTOCOL_PREFIX) :], subprotocol
    return None, None


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Whether an upgrade with this ``Origin`` may go on to authentication.

    Non-browser clients send no ``Origin``: allowed. A browser page may connect only when
    its origin is listed (``--allow-origin``, ``*`` for any), or when it is the server's own
    address *by IP literal or localhost* — a page on another site, or on a name that
    DNS-rebinds to this host, names a host the server does not answer as, and is refused
    (the ``bearer.`` subprotocol would otherwise let any page try tokens).
    """
    if origin is None:
        return True
    origin = origin.strip()
    if "*" in allowed or origin.rstrip("/").lower() in allowed:
        return True
    try:
        parts = urlsplit(origin)
        origin_host, origin_port = parts.hostname, parts.port
    except ValueError:
        return False
    if not origin_host or host is None:
        return False
    try:
        request = urlsplit(f"//{host}")
        request_host, request_port = request.hostname, request.port
    except ValueError:
        return False
    if request_host != origin_host or not _is_literal_or_loopback_name(origin_host):
        return False
    default_port = 443 if parts.scheme in ("https", "wss") else 80
    return (origin_port or default_port) == (request_port or default_port)


def normalize_origin(origin: str) -> str:
    """The form ``--allow-origin`` values are compared in."""
    return origin.strip().rstrip("/").lower()


def _is_literal_or_loopback_name(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
