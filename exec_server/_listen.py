"""Where the server listens: ``--listen`` addresses, parsed and opened.

``ws://HOST:PORT`` and ``wss://HOST:PORT`` (TLS, optionally mutual) are TCP listeners,
``unix:/path`` a unix-domain socket created with mode 0600 (``--unix-mode`` widens it),
``stdio`` the one client on stdin/stdout. Every WebSocket listener also answers plain HTTP
``GET /healthz`` and ``GET /metrics`` before the upgrade (see ``_websocket``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

import attrs
import trio

log = logging.getLogger(__name__)

DEFAULT_UNIX_MODE: Final = 0o600
_UNIX_BACKLOG: Final = 128
_MAX_UNIX_PATH: Final = 107  # sun_path is 108 bytes with its NUL

Scheme = Literal["ws", "wss", "unix", "stdio", "http"]


class ListenError(ValueError):
    """A ``--listen`` value that cannot be used; the message is one line."""


@attrs.frozen
class ListenAddress:
    scheme: Scheme
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "stdio":
            return "stdio"
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.scheme in ("unix", "stdio"):
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(value: str, *, schemes: tuple[Scheme, ...] = ("ws", "wss", "unix", "stdio")) -> ListenAddress:
    """Parse one ``--listen`` value.

    Raises:
        ListenError: anything but the forms above, with what was expected.
    """
    expected = " or ".join(
        {"ws": "ws://HOST:PORT", "wss": "wss://HOST:PORT", "unix": "unix:/PATH", "stdio": "stdio", "http": "HOST:PORT"}[s]
        for s in schemes
    )
    if value == "stdio" and "stdio" in schemes:
        return ListenAddress("stdio")
    if value.startswith("unix:") and "unix" in schemes:
        path = value[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/") or len(os.fsencode(path)) > _MAX_UNIX_PATH or "\0" in path:
            raise ListenError(f"--listen {value!r}: a unix socket needs an absolute path of at most {_MAX_UNIX_PATH} bytes")
        return ListenAddress("unix", path=path)
    if "http" in schemes and "://" not in value:
        value = f"http://{value}"
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ListenError(f"--listen {value!r}: {exc}; expected {expected}") from None
    scheme = parts.scheme
    if scheme not in schemes or scheme in ("unix", "stdio") or not host or port is None:
        raise ListenError(f"--listen {value!r}: expected {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ListenError(f"--listen {value!r}: no path, query or credentials allowed; expected {expected}")
    return ListenAddress(scheme, host=host, port=port)


@attrs.frozen(kw_only=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context: TLS 1.2+, the certificate chain, and client certificates when a CA is set.

    Raises:
        OSError, ssl.SSLError: unreadable or mismatched files.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files.client_ca)
    return context


async def open_tcp(address: ListenAddress, tls: ssl.SSLContext | None = None) -> list[trio.abc.Listener[trio.abc.Stream]]:
    """TCP listeners for ``address`` (TLS-wrapped when ``tls`` is given)."""
    listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    if tls is None:
        return list(listeners)
    return [trio.SSLListener(listener, tls, https_compatible=True) for listener in listeners]


def open_unix(path: str, mode: int = DEFAULT_UNIX_MODE) -> trio.SocketListener:
    """A unix-socket listener at ``path``, created with ``mode`` (never wider in between).

    A stale socket from an earlier run is replaced; any other file at ``path`` is an error.

    Raises:
        OSError: the path is taken by something that is not a socket, or cannot be bound.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        os.chmod(path, mode)
        sock.listen(_UNIX_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def remove_unix_socket(path: str) -> None:
    """Remove the socket file a listener made (at exit); anything else at ``path`` stays."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def bound_urls(address: ListenAddress, listeners: list[trio.abc.Listener[trio.abc.Stream]]) -> list[str]:
    """The addresses actually bound (port 0 resolved), as the first lines of stdout show them."""
    if address.scheme == "unix":
        return [str(address)]
    urls = []
    for listener in listeners:
        inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
        assert isinstance(inner, trio.SocketListener)
        host, port = inner.socket.getsockname()[:2]
        urls.append(str(ListenAddress(address.scheme, host=host, port=port)))
    return urls
