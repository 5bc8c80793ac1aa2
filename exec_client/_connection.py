"""One WebSocket connection speaking JSON-RPC: a reader task and request/response correlation.

The reader is the only task that receives; it resolves pending requests by id and hands
every notification to a synchronous callback (which must not block: the assembler is
pure, so routing an event is bookkeeping). Sends are serialised by trio-websocket's
stream lock. When the socket closes, every pending request fails with ``ConnectionLost``
and ``on_closed`` is told why, once.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import ssl
from collections.abc import Callable
from typing import Any, Final

from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

import protocol as p

from ._errors import ConnectionFailed, ConnectionLost, ProtocolViolation, ServerError

logger: Final = logging.getLogger("exec_client")

# Reads are capped at 4 MiB of payload (READ_MAX_BYTES), i.e. ~5.4 MiB after base64 and
# JSON; 64 MiB leaves room for servers with larger limits without being unbounded.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# Bytes per socket receive: large enough that a 20 MiB stream is not 5,000 syscalls.
RECEIVE_BUFFER_BYTES: Final = 256 * 1024
# Messages trio-websocket may queue ahead of our reader; when full, TCP pushes back.
MESSAGE_QUEUE_SIZE: Final = 16
CLOSE_TIMEOUT: Final = 2.0


def decode_frame(frame: str | bytes) -> p.Message:
    """Decode one WebSocket message into a protocol message.

    Every frame goes through here. Text frames are JSON-RPC; binary frames are the
    negotiated binary ``process/output`` framing (``initialize{binaryOutput: true}``,
    protocol/_binary.py), turned into the same notification a JSON event would be.

    Raises:
        ProtocolError: the frame is not a valid protocol message.
    """
    if isinstance(frame, bytes | bytearray):
        return p.Notification("process/output", p.decode_binary_output(frame))
    return p.decode(frame, tolerant=True)


def _parse_url(url: str) -> tuple[bool, str, int, str]:
    """``ws://host:port/path`` → (secure, host, port, resource); ``ValueError`` if not a ws URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("expected ws://HOST:PORT")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, parts.hostname, port, resource


def _process_id_of(frame: str | bytes) -> str | None:
    """The ``params.processId`` of a frame that failed to decode, if it has one."""
    try:
        payload = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    params = payload.get("params") if isinstance(payload, dict) else None
    process_id = params.get("processId") if isinstance(params, dict) else None
    return process_id if isinstance(process_id, str) else None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The most telling exception in ``group``: a handshake or OS error if there is one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for leaf in leaves:
        if isinstance(leaf, trio_websocket.HandshakeError | OSError):
            return leaf
    return next((leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)), leaves[0])


def _os_reason(exc: OSError) -> str:
    # trio's "all attempts to connect failed" hides the errno in its cause.
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return exc.strerror or str(exc) or type(exc).__name__


_METHOD_OF_PARAMS: Final[dict[type, str]] = {
    params: method for method, (params, _result) in p.REQUEST_METHODS.items() if params is not p.EmptyParams
}


@attrs.define
class _Pending:
    method: str
    raw: bool = False
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.frozen
class CloseInfo:
    """Why a connection ended: the WebSocket close code (``None`` if none) and a reason."""

    code: int | None
    reason: str
    by_us: bool


class Connection:
    """A JSON-RPC client connection over one WebSocket.

    Use ``Connection.open``; run ``reader`` in a nursery (``open`` does it).
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        url: str,
        on_notification: Callable[[p.Notification], None],
        on_closed: Callable[[Connection, CloseInfo], None],
        on_unreadable: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self._on_unreadable = on_unreadable
        self._ws = ws
        self._on_notification = on_notification
        self._on_closed = on_closed
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._closing = False
        self.close_info: CloseInfo | None = None
        self.closed = trio.Event()

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        url: str,
        token: str,
        *,
        on_notification: Callable[[p.Notification], None],
        on_closed: Callable[[Connection, CloseInfo], None],
        on_unreadable: Callable[[str], None] | None = None,
        timeout: float = 10.0,
    ) -> Connection:
        """Connect, authenticate, and start the reader task in ``nursery``.

        Raises:
            ConnectionFailed: refused, unreachable, bad token, or no handshake in ``timeout``.
        """
        try:
            with trio.fail_after(timeout if timeout is not None else math.inf):
                connection: Connection = await nursery.start(
                    cls._run, url, token, on_notification, on_closed, on_unreadable
                )
        except trio.TooSlowError:
            raise ConnectionFailed(f"cannot connect to {url}: no answer within {timeout:g} s") from None
        except trio_websocket.ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise ConnectionFailed(
                    f"authentication failed at {url} (HTTP {exc.status_code}): check the token"
                ) from None
            raise ConnectionFailed(f"{url} refused the WebSocket upgrade (HTTP {exc.status_code})") from None
        except trio_websocket.HandshakeError as exc:
            if isinstance(exc.__cause__, OSError):  # trio-websocket wraps connect errors
                raise ConnectionFailed(f"cannot connect to {url}: {_os_reason(exc.__cause__)}") from None
            raise ConnectionFailed(f"cannot connect to {url}: WebSocket handshake failed") from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {url}: {_os_reason(exc)}") from None
        except ValueError as exc:  # a malformed URL
            raise ConnectionFailed(f"cannot connect to {url!r}: {exc}") from None
        return connection

    @classmethod
    async def _run(
        cls,
        url: str,
        token: str,
        on_notification: Callable[[p.Notification], None],
        on_closed: Callable[[Connection, CloseInfo], None],
        on_unreadable: Callable[[str], None] | None,
        *,
        task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # We open (and always close) the TCP stream ourselves: trio-websocket 0.12 leaks
        # its socket after a rejected handshake or an abnormal closure (code 1006).
        secure, host, port, resource = _parse_url(url)
        if secure:
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl.create_default_context(), https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
        connection: Connection | None = None
        try:
            async with trio.open_nursery() as ws_nursery:
                ws = await trio_websocket.wrap_client_stream(
                    ws_nursery,
                    stream,
                    host if port in (80, 443) else f"{host}:{port}",
                    resource,
                    extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
                    max_message_size=MAX_MESSAGE_BYTES,
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    receive_buffer_size=RECEIVE_BUFFER_BYTES,
                )
                connection = cls(ws, url, on_notification, on_closed, on_unreadable)
                task_status.started(connection)
                await connection._reader()
                # The WebSocket's reader task finishes the close handshake and then ends
                # by itself; bound it in case the peer never answers.
                ws_nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
        except BaseExceptionGroup as group:
            if connection is not None:
                # The reader already reported the close; a teardown error adds nothing.
                logger.debug("exec_client: connection teardown: %r", group)
                connection._finish(CloseInfo(None, f"connection failed: {group!r}", by_us=connection._closing))
                return
            # Before started(): surface the handshake failure itself to Connection.open.
            raise _first_leaf(group) from None
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    @property
    def is_closed(self) -> bool:
        return self.close_info is not None

    async def request(self, params: Any, method: str | None = None, *, raw: bool = False) -> Any:
        """Send a call and wait for its answer; the result is decoded to its typed class.

        ``method`` is needed only for parameterless calls; ``raw=True`` returns the result
        as JSON data (``initialize`` is decoded leniently by the caller).

        Raises:
            ServerError: the server answered with an error (a subclass by code).
            ConnectionLost: the connection closed before the answer.
            ProtocolViolation: the answer was malformed.
        """
        if self.close_info is not None:
            raise ConnectionLost(self.close_info.reason)
        request_id = next(self._ids)
        method = method or _METHOD_OF_PARAMS[type(params)]
        text = p.encode_request(request_id, params, method)
        pending = _Pending(method, raw=raw)
        self._pending[request_id] = pending
        try:
            try:
                await self._ws.send_message(text)
            except trio_websocket.ConnectionClosed:
                raise ConnectionLost(self._reason_text()) from None
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def notify(self, params: Any) -> None:
        try:
            await self._ws.send_message(p.encode_notification(params))
        except trio_websocket.ConnectionClosed:
            raise ConnectionLost(self._reason_text()) from None

    async def aclose(self) -> None:
        """Close with 1000; idempotent."""
        self._closing = True
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            await self._ws.aclose()
        self._finish(CloseInfo(1000, "closed by the client", by_us=True))

    # --- internals -------------------------------------------------------------------

    def _reason_text(self) -> str:
        if self.close_info is not None:
            return self.close_info.reason
        reason = self._ws.closed
        if reason is None:
            return "connection closed"
        return f"connection closed ({reason.code} {reason.name}{': ' + reason.reason if reason.reason else ''})"

    async def _reader(self) -> None:
        info: CloseInfo
        try:
            while True:
                frame = await self._ws.get_message()
                self._dispatch(frame)
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            code = reason.code if reason is not None else None
            info = CloseInfo(code, self._reason_text(), by_us=self._closing)
        except Exception as exc:  # a bug in dispatch must not leave requests hanging
            logger.exception("exec_client: reader failed")
            info = CloseInfo(None, f"client reader failed: {exc!r}", by_us=False)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self._ws.aclose()
        self._finish(info)

    def _finish(self, info: CloseInfo) -> None:
        if self.close_info is not None:
            return
        self.close_info = info
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = ConnectionLost(info.reason)
                pending.done.set()
        self.closed.set()
        self._on_closed(self, info)

    def _dispatch(self, frame: str | bytes) -> None:
        try:
            message = decode_frame(frame)
        except p.ProtocolError as exc:
            # A malformed frame cannot be answered (we are the client). If it names a
            # process, that process repairs whatever it carried with a read.
            logger.warning("exec_client: ignoring a malformed frame from the server: %s", exc.message)
            process_id = _process_id_of(frame)
            if process_id is not None and self._on_unreadable is not None:
                self._on_unreadable(process_id)
            return
        if isinstance(message, p.Notification):
            self._on_notification(message)
            return
        if isinstance(message, p.Request):
            logger.warning("exec_client: ignoring a request from the server: %s", message.method)
            return
        pending = self._pending.get(message.id) if isinstance(message.id, int) else None
        if pending is None:
            logger.warning("exec_client: ignoring a response to unknown id %r", message.id)
            return
        if isinstance(message, p.ErrorResponse):
            pending.error = ServerError.from_error(message.code, message.message, message.data)
        elif pending.raw:
            pending.result = message.result
        else:
            try:
                pending.result = p.decode_result(pending.method, message.result)
            except p.ProtocolError as exc:
                pending.error = ProtocolViolation(f"malformed {pending.method} result: {exc.message}")
        pending.done.set()
