"""The small interface between the session core and a wire: one message in, one message out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._tokens import Principal


class TransportClosed(Exception):
    """The peer went away (EOF, close frame, reset).

    Args:
        code: the close code the peer sent (WebSocket), None without a close frame.
    """

    def __init__(self, code: int | None = None) -> None:
        super().__init__(code)
        self.code = code


class MessageTransport(Protocol):
    """A message-framed duplex stream (a WebSocket, or newline-delimited stdio)."""

    #: Whether a stalled peer may be disconnected (protocol §8: WebSocket yes, stdio no).
    drops_slow_consumers: bool
    #: Whether it can carry binary frames (the negotiated binary output framing).
    supports_binary: bool
    #: Who authenticated it (the token's name and sandbox ceiling); for logs and metrics.
    principal: Principal
    #: The peer's address as a log line shows it.
    peer: str
    #: What the per-peer cap on detached sessions counts by (the remote host); None: no cap.
    peer_host: str | None

    async def receive(self) -> str | bytes:
        """The next whole message. Raises ``TransportClosed`` at the end."""
        ...

    async def send(self, messages: Sequence[str | bytes]) -> None:
        """Write these messages, in order, with one write to the stream where it can.

        Raises ``TransportClosed`` if the peer is gone.
        """
        ...

    async def ping(self) -> None:
        """Return once the peer proved it is alive (a WebSocket pong; stdio: at once).

        Raises ``TransportClosed`` if the peer is gone. The caller bounds the wait.
        """
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code (stdio ignores it). Idempotent."""
        ...
