"""The stdio adapter: newline-delimited JSON on stdin/stdout, one client, logs on stderr."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import trio

from ._server import Server
from ._tokens import Principal
from ._transport import TransportClosed

_READ_BYTES: Final = 256 * 1024


class StdioTransport:
    """``MessageTransport`` over a pair of byte streams, one JSON message per line."""

    drops_slow_consumers = False  # protocol §8: on stdio the writer waits
    supports_binary = False
    # Whoever holds the pipes is the client (no token on stdio).
    principal = Principal("stdio")
    peer = "stdio"
    peer_host: str | None = None  # one client per process: nothing to cap

    def __init__(self, receive_stream: trio.abc.ReceiveStream, send_stream: trio.abc.SendStream, max_line: int) -> None:
        self._receive_stream = receive_stream
        self._send_stream = send_stream
        self._buffer = bytearray()
        self._max_line = max_line
        self._eof = False

    async def receive(self) -> str | bytes:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                if line.strip():
                    return line
                continue
            if self._eof:
                raise TransportClosed
            if len(self._buffer) > self._max_line:
                # Hand the oversized line to the core (it answers -32005) and drop the rest.
                line = bytes(self._buffer)
                self._buffer.clear()
                await self._discard_to_newline()
                return line
            data = await self._receive_stream.receive_some(_READ_BYTES)
            if not data:
                self._eof = True
                if self._buffer.strip():
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line
                raise TransportClosed
            self._buffer += data

    async def _discard_to_newline(self) -> None:
        while True:
            data = await self._receive_stream.receive_some(_READ_BYTES)
            if not data:
                self._eof = True
                return
            newline = data.find(b"\n")
            if newline >= 0:
                self._buffer += data[newline + 1 :]
                return

    async def send(self, messages: Sequence[str | bytes]) -> None:
        data = b"".join((message.encode() if isinstance(message, str) else message) + b"\n" for message in messages)
        try:
            await self._send_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None

    async def ping(self) -> None:
        pass  # a pipe's peer that goes away is seen as EOF; nothing to probe

    async def close(self, code: int, reason: str) -> None:
        pass  # the process exits; closing fds 0/1 early would only confuse the parent


async def serve_stdio(server: Server) -> None:
    """Serve the one client on this process's stdin/stdout until stdin ends."""
    receive_stream = trio.lowlevel.FdStream(os.dup(0))
    send_stream = trio.lowlevel.FdStream(os.dup(1))
    async with receive_stream, send_stream:
        await server.serve(StdioTransport(receive_stream, send_stream, server.config.max_message_bytes))
