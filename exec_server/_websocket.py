"""The WebSocket adapter: authenticate the upgrade, then hand the socket to the session core."""

from __future__ import annotations

import logging
from typing import Final

import trio
import trio_websocket

from ._auth import presented_token, token_matches
from ._server import Server
from ._transport import TransportClosed

log = logging.getLogger(__name__)

# The WebSocket layer lets through messages up to this; our own limit (maxMessageBytes) is
# lower so that an oversized message is answered with -32005 instead of killing the
# connection with 1009. Not more: a message being assembled is held twice (its parts and
# their join), and that must fit the server's memory bound.
_FRAME_LIMIT_FACTOR: Final = 2
_RECEIVE_BUFFER_BYTES: Final = 256 * 1024


class WebSocketTransport:
    """``MessageTransport`` over a trio-websocket connection."""

    drops_slow_consumers = True
    supports_binary = True

    def __init__(self, websocket: trio_websocket.WebSocketConnection) -> None:
        self._websocket = websocket

    async def receive(self) -> str | bytes:
        try:
            return await self._websocket.get_message()
        except trio_websocket.ConnectionClosed:
            raise TransportClosed from None

    async def send(self, message: str | bytes) -> None:
        try:
            await self._websocket.send_message(message)
        except trio_websocket.ConnectionClosed:
            raise TransportClosed from None

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.aclose(code, reason)


async def serve_websocket(
    server: Server,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[trio_websocket.WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (0 picks a port) until cancelled.

    Cancelling this task stops accepting; connections already accepted live on in the
    server's own nursery until the server closes them. trio's ``SocketStream`` sets
    TCP_NODELAY on every accepted socket.
    """
    token = server.config.token

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        presented, subprotocol = presented_token(request.headers, request.proposed_subprotocols)
        if not token_matches(token, presented):
            log.info("refused an upgrade without a valid token from %s", request.remote)
            await request.reject(401, extra_headers=[(b"WWW-Authenticate", b"Bearer")], body=b"unauthorized\n")
            return
        websocket = await request.accept(subprotocol=subprotocol)
        await server.serve(WebSocketTransport(websocket))

    await trio_websocket.serve_websocket(
        handle,
        host,
        port,
        ssl_context=None,
        handler_nursery=server.connection_nursery,
        max_message_size=server.config.max_message_bytes * _FRAME_LIMIT_FACTOR,
        receive_buffer_size=_RECEIVE_BUFFER_BYTES,
        task_status=task_status,
    )
