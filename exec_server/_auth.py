"""The bearer token: where it comes from and how a request proves it."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Final

TOKEN_ENV: Final = "EXEC_SERVER_TOKEN"
DEFAULT_TOKEN_FILE: Final = Path("~/.config/exec-server/token")
SUBPROTOCOL_PREFIX: Final = "bearer."
_MIN_TOKEN_CHARS: Final = 32


def load_or_create_token(token_file: Path | None) -> tuple[str, Path | None]:
    """The token: ``EXEC_SERVER_TOKEN`` if set, else the file's content, else a new one.

    A new token (43 URL-safe characters) is written to the file with mode 0600.

    Returns:
        The token and the file it lives in (None when it came from the environment).
    """
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return from_env, None
    path = (token_file or DEFAULT_TOKEN_FILE).expanduser()
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token, path
    token = secrets.token_urlsafe(32)
    assert len(token) >= _MIN_TOKEN_CHARS
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, path


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison (``hmac.compare_digest``)."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


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
