"""The small interface between the client's connection and a wire, and where each target goes.

A ``ClientTransport`` carries whole messages both ways: a WebSocket (``ws://``, ``wss://``,
``unix:/path``; ``_websocket.py``) or newline-delimited JSON over a spawned server's stdio
(``command=[...]`` locally, ``ssh://[user@]host[:port]`` through ``ssh``; ``_stdio.py``).
The connection above it never knows which.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Final, Protocol
from urllib.parse import unquote, urlsplit

import attrs

from ._errors import ConnectionFailed

# What runs on the far side of a stdio transport unless the caller names a command.
DEFAULT_SERVER_COMMAND: Final = ("exec-server", "serve", "--listen", "stdio")
UNIX_PREFIX: Final = "unix:"


class TransportClosed(Exception):
    """The wire ended: the WebSocket close code (``None`` for an abnormal end) and why."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientTransport(Protocol):
    """A message-framed duplex connection to one server."""

    #: Whether binary frames can be carried (the negotiated binary output framing).
    supports_binary: bool
    #: Whether ``ping`` means anything (WebSocket); stdio relies on the pipe's EOF.
    can_ping: bool

    async def send(self, message: str | bytes) -> None:
        """Write one message. Raises ``TransportClosed`` if the wire is gone."""
        ...

    async def receive(self) -> str | bytes | bytearray:
        """The next whole message (a binary one may be a bytearray, handed on without a copy).
        Raises ``TransportClosed`` at the end."""
        ...

    async def ping(self, timeout: float) -> bool:
        """Ping the peer; ``True`` if the pong came within ``timeout`` seconds."""
        ...

    async def aclose(self, code: int, reason: str) -> None:
        """Close gracefully (bounded in time). Idempotent."""
        ...

    async def abort(self) -> None:
        """Drop the wire at once, without a closing handshake. Idempotent."""
        ...

    def ack_at_once(self) -> None:
        """From now on, acknowledge what arrives at once (TCP only; a no-op elsewhere)."""
        ...


@attrs.frozen(kw_only=True)
class WebSocketTarget:
    url: str
    secure: bool
    host: str
    port: int
    resource: str
    unix_path: str | None = None

    @property
    def host_header(self) -> str:
        if self.unix_path is not None:
            return "localhost"
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@attrs.frozen(kw_only=True)
class CommandTarget:
    """A server spawned with ``argv`` that speaks the protocol on its stdin/stdout."""

    url: str
    argv: tuple[str, ...]


Target = WebSocketTarget | CommandTarget


def ssh_argv(url: str, command: Sequence[str] | None, ssh_options: Sequence[str]) -> tuple[str, ...]:
    """``ssh://[user@]host[:port]`` → the ``ssh`` command that runs the server over stdio."""
    import shlex

    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("expected ssh://[USER@]HOST[:PORT]")
    destination = f"{unquote(parts.username)}@{parts.hostname}" if parts.username else parts.hostname
    argv = ["ssh", "-T", "-o", "BatchMode=yes", *ssh_options]
    if parts.port:
        argv += ["-p", str(parts.port)]
    remote = shlex.join(command if command is not None else DEFAULT_SERVER_COMMAND)
    return (*argv, "--", destination, remote)


def parse_target(
    url: str | None, *, command: Sequence[str] | None = None, ssh_options: Sequence[str] = ()
) -> Target:
    """Where to connect for ``url`` (``ws://``, ``wss://``, ``unix:/path``, ``ssh://``) or ``command``.

    Raises:
        ValueError: neither names a server, or the URL is not one of those forms.
    """
    if url is None:
        if not command:
            raise ValueError("give a server URL or command=[...]")
        return CommandTarget(url=f"command:{command[0]}", argv=tuple(command))
    if url.startswith(UNIX_PREFIX):
        path = url[len(UNIX_PREFIX) :]
        if not path:
            raise ValueError("expected unix:/PATH")
        return WebSocketTarget(url=url, secure=False, host="localhost", port=0, resource="/", unix_path=path)
    parts = urlsplit(url)
    if parts.scheme == "ssh":
        return CommandTarget(url=url, argv=ssh_argv(url, command, ssh_options))
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("expected ws://HOST:PORT, wss://HOST:PORT, unix:/PATH or ssh://[USER@]HOST[:PORT]")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebSocketTarget(url=url, secure=secure, host=parts.hostname, port=port, resource=resource)


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system CAs, or only ``ca_file`` when given."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"cannot load the CA file {ca_file}: {exc}") from None


async def open_transport(
    target: Target, token: str | None, *, ca_file: str | None, timeout: float, max_message_bytes: int
) -> ClientTransport:
    """Connect to ``target`` (the modules of the other transports are imported only when used).

    Raises:
        ConnectionFailed: unreachable, refused, a bad token, or no handshake in ``timeout``.
    """
    if isinstance(target, CommandTarget):
        from ._stdio import StdioTransport

        return await StdioTransport.spawn(target, max_message_bytes=max_message_bytes)
    from ._websocket import WebSocketTransport

    context = ssl_context(ca_file) if target.secure else None
    return await WebSocketTransport.connect(
        target, token, ssl_context=context, timeout=timeout, max_message_bytes=max_message_bytes
    )
