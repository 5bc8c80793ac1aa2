"""The small interface between the session core and a wire: one message in, one message out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._tokens import Principal


class TransportClosed(Exception):
    """The peer went away (EOF, close frame, reset)."""


class MessageTransport(Protocol):
    """A message-framed duplex stream (a WebSocket, or newline-delimited stdio)."""

    #: Whether a stalled peer may be disconnected (protocol §7: WebSocket yes, stdio no).
    drops_slow_consumers: bool
    #: Whether it can carry binary frames (the negotiated binary output framing).
    supports_binary: bool
    #: Who authenticated it (the token's name and sandbox ceiling); for logs and metrics.
    principal: Principal
    #: The peer's address as a log line shows it.
    peer: str

    async def receive(self) -> str | bytes:
        """The next whole message. Raises ``TransportClosed`` at the end."""
        ...

    async def send(self, message: str | bytes) -> None:
        """Write one message. Raises ``TransportClosed`` if the peer is gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code (stdio ignores it). Idempotent."""
        ...
