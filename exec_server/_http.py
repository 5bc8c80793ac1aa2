"""Plain HTTP/1.1 before the WebSocket upgrade: read one request head, answer one response.

The request head is read and parsed here (h11) before any WebSocket code sees it, so the
same port can answer ``GET /healthz`` and ``GET /metrics``; an upgrade request's bytes are
then handed to the WebSocket layer as they came.
"""

from __future__ import annotations

from typing import Final

import h11
import trio

# A request head (request line + headers) larger than this is refused with 431.
MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
_HEAD_READ_BYTES: Final = 4096

HTTP_OK: Final = 200
HTTP_UNAUTHORIZED: Final = 401
HTTP_FORBIDDEN: Final = 403
HTTP_NOT_FOUND: Final = 404
HTTP_METHOD_NOT_ALLOWED: Final = 405
HTTP_HEADERS_TOO_LARGE: Final = 431
HTTP_BAD_REQUEST: Final = 400
HTTP_UNAVAILABLE: Final = 503


async def read_head(stream: trio.abc.Stream) -> bytes:
    """Bytes up to the end of the request head (and whatever came with it); stops past the
    size limit or at EOF, so the result may lack the blank line that ends a head."""
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer and len(buffer) <= MAX_REQUEST_HEAD_BYTES:
        data = await stream.receive_some(_HEAD_READ_BYTES)
        if not data:
            break
        buffer += data
    return bytes(buffer)


def parse_head(head: bytes) -> h11.Request | None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES * 2)
    try:
        connection.receive_data(head)
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


async def respond(
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    *,
    head_only: bool = False,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
        (b"Cache-Control", b"no-store"),
        *(extra or []),
    ]
    connection = h11.Connection(h11.SERVER)
    # h11 answers only a request it has seen; a minimal one stands in for the peer's.
    connection.receive_data(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" if head_only else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    connection.next_event()
    data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    if not head_only:
        data += connection.send(h11.Data(data=body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
