"""The WebSocket transport: ``wsproto`` framing over an anyio byte stream (TCP, TLS or unix).

wsproto is sans-io (bytes in, events out), so this file is only the loop around it: one
reader (``receive``) that also answers pings and close frames, and sends serialised by a
lock. Runs on asyncio and trio alike.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Final

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from ._errors import ConnectionFailed
from ._transport import TransportClosed, WebSocketTarget

# Bytes per socket receive: large enough that a 20 MiB stream is not 5,000 syscalls.
RECEIVE_BUFFER_BYTES: Final = 256 * 1024
# Bound on the closing handshake (our close frame out, the server's back).
CLOSE_TIMEOUT: Final = 2.0
CLOSE_ABNORMAL: Final = 1006
CLOSE_TOO_BIG: Final = 1009
HTTP_UNAUTHORIZED: Final = frozenset({401, 403})

_STREAM_ERRORS: Final = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# Linux only: ACK every segment at once instead of delaying the ACK (up to 40 ms).
_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)
# Quick ACKs are re-armed only after a read shorter than this: a full read means a bulk
# stream, whose full-sized segments Nagle does not hold, and a setsockopt per read cost ~10%
# of the client's CPU on a 100 MB stream from Codex's server.
QUICKACK_AFTER_READS_BELOW: Final = 64 * 1024


def _quickack_socket(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The TCP socket under ``stream`` if quick ACKs can be asked for on it, else ``None``.

    Why (``ack_at_once``): a server that does not set TCP_NODELAY (Codex's exec-server)
    holds its second small write — the first event after a ``process/start`` answer —
    until the first is ACKed (Nagle), and a delayed ACK makes that 40 ms per command: a
    one-shot ``/usr/bin/true`` took 48 ms on ``codex exec-server``, 5 ms with quick ACKs.
    Linux leaves quick-ACK mode on its own, so ``receive`` asks again before the next read
    whenever the last one was short (``QUICKACK_AFTER_READS_BELOW``). Only for such a server: against ours (which sets TCP_NODELAY)
    the extra ACKs bought nothing and cost ~0.5 ms per one-shot on a loaded 2-core host.
    """
    if _TCP_QUICKACK is None:
        return None
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def _os_reason(exc: BaseException) -> str:
    """The errno text of a connect failure, through anyio's "all attempts failed" wrapping."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop(0)
        if isinstance(current, OSError) and current.errno is not None:
            return os.strerror(current.errno).lower()
        if isinstance(current, BaseExceptionGroup):
            seen.extend(current.exceptions)
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return str(exc) or type(exc).__name__


class WebSocketTransport:
    """``ClientTransport`` over one WebSocket. Create it with ``connect``."""

    supports_binary = True
    can_ping = True

    def __init__(self, stream: anyio.abc.ByteStream, ws: WSConnection, url: str, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = ws
        self._url = url
        self._max_message_bytes = max_message_bytes
        self._send_lock = anyio.Lock()
        self._pieces: list[str | bytes | bytearray] = []
        self._piece_bytes = 0
        self._closed: TransportClosed | None = None
        self._closed_event = anyio.Event()
        self._pong = anyio.Event()
        self._pings = 0
        self._quickack: socket.socket | None = None
        self._rearm_quickack = False

    @classmethod
    async def connect(
        cls,
        target: WebSocketTarget,
        token: str | None,
        *,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        max_message_bytes: int,
    ) -> WebSocketTransport:
        """Open the stream and complete the upgrade (with ``Authorization: Bearer``).

        Raises:
            ConnectionFailed: unreachable, refused (401: the token), or no handshake in ``timeout``.
        """
        url = target.url
        try:
            with anyio.fail_after(timeout):
                stream = await cls._open_stream(target, ssl_context)
                try:
                    return await cls._handshake(stream, target, token, max_message_bytes)
                except BaseException:
                    await anyio.aclose_forcefully(stream)
                    raise
        except TimeoutError:
            raise ConnectionFailed(f"cannot connect to {url}: no answer within {timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or exc.reason or "untrusted"
            raise ConnectionFailed(
                f"cannot connect to {url}: TLS certificate verify failed: {detail} (see ca_file / --ca-file)"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectionFailed(f"cannot connect to {url}: TLS failed: {exc.reason or exc}") from None
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise ConnectionFailed(f"cannot connect to {url}: {_os_reason(exc)}") from None

    @staticmethod
    async def _open_stream(target: WebSocketTarget, context: ssl.SSLContext | None) -> anyio.abc.ByteStream:
        if target.unix_path is not None:
            return await anyio.connect_unix(target.unix_path)
        if context is not None:
            return await anyio.connect_tcp(
                target.host, target.port, ssl_context=context, tls_hostname=target.host, tls_standard_compatible=False
            )
        return await anyio.connect_tcp(target.host, target.port)

    @classmethod
    async def _handshake(
        cls, stream: anyio.abc.ByteStream, target: WebSocketTarget, token: str | None, max_message_bytes: int
    ) -> WebSocketTransport:
        ws = WSConnection(ConnectionType.CLIENT)
        headers = [(b"Authorization", f"Bearer {token}".encode())] if token is not None else []
        await stream.send(ws.send(Request(host=target.host_header, target=target.resource, extra_headers=headers)))
        transport = cls(stream, ws, target.url, max_message_bytes)
        while True:
            data = await stream.receive(RECEIVE_BUFFER_BYTES)
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return transport
                if isinstance(event, RejectConnection):
                    if event.status_code in HTTP_UNAUTHORIZED:
                        raise ConnectionFailed(
                            f"authentication failed at {target.url} (HTTP {event.status_code}): check the token"
                        )
                    raise ConnectionFailed(f"{target.url} refused the WebSocket upgrade (HTTP {event.status_code})")
                if isinstance(event, RejectData):
                    continue
            # Events that follow the upgrade in the same read (a first pushed frame) are
            # kept by wsproto for the first receive().

    # --- ClientTransport ---------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        if self._closed is not None:
            raise self._closed
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        await self._send_event(event)

    async def receive(self) -> str | bytes | bytearray:
        while True:
            if self._closed is not None:
                raise self._closed
            for event in self._ws.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            if self._rearm_quickack and self._quickack is not None:
                try:
                    self._quickack.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]
                except OSError:
                    self._quickack = None  # closing: the read below tells
            try:
                data = await self._stream.receive(RECEIVE_BUFFER_BYTES)
            except _STREAM_ERRORS:
                data = None
            if data is None:
                self._set_closed(CLOSE_ABNORMAL, "connection closed abnormally (no close frame)")
                try:
                    self._ws.receive_data(None)
                except LocalProtocolError:
                    pass
                await anyio.aclose_forcefully(self._stream)
                continue
            if self._quickack is not None:
                self._rearm_quickack = len(data) < QUICKACK_AFTER_READS_BELOW
            self._ws.receive_data(data)

    async def ping(self, timeout: float) -> bool:
        self._pings += 1
        self._pong = pong = anyio.Event()
        try:
            await self._send_event(Ping(payload=self._pings.to_bytes(8, "big")))
        except TransportClosed:
            return False
        with anyio.move_on_after(timeout):
            await pong.wait()
        return pong.is_set()

    async def aclose(self, code: int, reason: str) -> None:
        if self._closed is None and self._ws.state is ConnectionState.OPEN:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                try:
                    await self._send_event(CloseConnection(code=code, reason=reason))
                    # The server's close frame, seen by the reader, ends the handshake.
                    await self._closed_event.wait()
                except TransportClosed:
                    pass
        self._set_closed(code, "closed by the client")
        await anyio.aclose_forcefully(self._stream)

    def ack_at_once(self) -> None:
        self._quickack = _quickack_socket(self._stream)
        self._rearm_quickack = self._quickack is not None

    async def abort(self) -> None:
        self._set_closed(CLOSE_ABNORMAL, "connection dropped by the client")
        await anyio.aclose_forcefully(self._stream)

    # --- internals ----------------------------------------------------------------------

    def _set_closed(self, code: int | None, reason: str) -> None:
        if self._closed is None:
            self._closed = TransportClosed(code, reason)
            self._closed_event.set()

    async def _send_event(self, event: TextMessage | BytesMessage | Ping | Pong | CloseConnection) -> None:
        async with self._send_lock:
            if self._closed is not None:
                raise self._closed
            try:
                data = self._ws.send(event)
                await self._stream.send(data)
            except LocalProtocolError:
                raise TransportClosed(CLOSE_ABNORMAL, "connection closed") from None
            except _STREAM_ERRORS as exc:
                self._set_closed(CLOSE_ABNORMAL, f"connection lost: {_os_reason(exc)}")
                raise self._closed from None  # type: ignore[misc]

    async def _handle(self, event: object) -> str | bytes | bytearray | None:
        if isinstance(event, TextMessage | BytesMessage):
            # A binary frame's data stays the bytearray wsproto made (no copy per piece): a
            # message of several pieces is joined into bytes, a whole one is handed on as is.
            self._pieces.append(event.data)
            self._piece_bytes += len(event.data)
            if self._piece_bytes > self._max_message_bytes:
                await self._too_big()
                return None
            if not event.message_finished:
                return None
            pieces, self._pieces, self._piece_bytes = self._pieces, [], 0
            if len(pieces) == 1:
                return pieces[0]
            return "".join(pieces) if isinstance(event, TextMessage) else b"".join(pieces)  # type: ignore[arg-type]
        if isinstance(event, Ping):
            try:
                await self._send_event(event.response())
            except TransportClosed:
                pass
        elif isinstance(event, Pong):
            self._pong.set()
        elif isinstance(event, CloseConnection):
            reason = f"connection closed ({event.code}{': ' + event.reason if event.reason else ''})"
            if self._ws.state is not ConnectionState.CLOSED:
                try:
                    await self._send_event(event.response())
                except TransportClosed:
                    pass
            self._set_closed(event.code, reason)
            await anyio.aclose_forcefully(self._stream)
        return None

    async def _too_big(self) -> None:
        self._pieces, self._piece_bytes = [], 0
        try:
            await self._send_event(CloseConnection(code=CLOSE_TOO_BIG, reason="message too big"))
        except TransportClosed:
            pass
        self._set_closed(CLOSE_TOO_BIG, f"the server sent a message over {self._max_message_bytes} bytes")
        await anyio.aclose_forcefully(self._stream)

