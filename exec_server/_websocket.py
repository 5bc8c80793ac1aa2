"""The WebSocket adapter: admit a connection, answer plain HTTP, authenticate the upgrade,
then hand the socket to the session core.

Each accepted stream goes through, in order:

1. **admission** — at most ``max_pending_handshakes`` connections may be between accept and
   an authenticated upgrade; one more is closed at once (an unauthenticated peer cannot hold
   the server's file descriptors). The whole handshake (TLS included) has
   ``handshake_timeout`` seconds. The accept loop backs off when the process is out of file
   descriptors (EMFILE/ENFILE) instead of dying;
2. **the request head** — read and parsed here (h11) before any WebSocket code sees it, so a
   plain ``GET /healthz`` (200 ``ok``, no token) or ``GET /metrics`` (Prometheus text, token
   required) is answered on the same port;
3. **the upgrade** — a browser ``Origin`` that is not this server's own address and not in
   ``--allow-origin`` gets 403; a missing or wrong token 401; else the upgrade is accepted
   with the token's ``Principal`` on the transport.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import struct
from collections.abc import Sequence
from typing import Final

import attrs
import h11
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.utilities import LocalProtocolError

from . import _metrics
from ._http import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    HTTP_HEADERS_TOO_LARGE,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_OK,
    HTTP_UNAUTHORIZED,
    HTTP_UNAVAILABLE,
    MAX_REQUEST_HEAD_BYTES,
    parse_head,
    read_head,
    respond,
)
from ._auth import normalize_origin, origin_allowed, presented_token
from ._logging import connections_log, log_event
from ._server import Server
from ._tokens import Principal, TokenStore
from ._transport import TransportClosed

log = logging.getLogger(__name__)

# The WebSocket layer lets through messages up to this; our own limit (maxMessageBytes) is
# lower so that an oversized message is answered with -32005 instead of killing the
# connection with 1009. Not more: a message being assembled is held twice (its parts and
# their join), and that must fit the server's memory bound.
_FRAME_LIMIT_FACTOR: Final = 2
_RECEIVE_BUFFER_BYTES: Final = 256 * 1024
_MESSAGE_QUEUE_SIZE: Final = 1
DEFAULT_MAX_PENDING_HANDSHAKES: Final = 256
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
# An HTTP request head (request line + headers) larger than this is refused with 431.
# Accept-loop back-off while the process has no free file descriptor.
_ACCEPT_BACKOFF_MIN: Final = 0.05
_ACCEPT_BACKOFF_MAX: Final = 1.0
_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Refusals for a full pending-handshake table are logged at most this often.
_REFUSAL_LOG_INTERVAL: Final = 10.0
_CLOSE_SECONDS: Final = 1.0
_NO_REQUEST: Final = "closed before a request"
# struct ucred of SO_PEERCRED: pid, uid, gid.
_UCRED: Final = struct.Struct("=iII")
_CLOSE_NORMAL: Final = 1000



def _normalized_origins(origins: frozenset[str]) -> frozenset[str]:
    return frozenset(map(normalize_origin, origins))


@attrs.frozen(kw_only=True)
class WebSocketOptions:
    """What an operator sets for the WebSocket listeners (flags of the same names)."""

    max_pending_handshakes: int = DEFAULT_MAX_PENDING_HANDSHAKES
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    allow_origins: frozenset[str] = attrs.field(default=frozenset(), converter=_normalized_origins)


class WebSocketTransport:
    """``MessageTransport`` over a trio-websocket connection."""

    drops_slow_consumers = True
    supports_binary = True

    def __init__(
        self,
        websocket: trio_websocket.WebSocketConnection,
        *,
        principal: Principal = Principal("default"),
        peer: str = "",
        peer_host: str | None = None,
    ) -> None:
        self._websocket = websocket
        self.principal = principal
        self.peer = peer
        self.peer_host = peer_host

    async def receive(self) -> str | bytes:
        try:
            return await self._websocket.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(exc.reason.code if exc.reason is not None else None) from None

    async def send(self, messages: Sequence[str | bytes]) -> None:
        try:
            if isinstance(self._websocket, _StrictWebSocketConnection):
                await self._websocket.send_messages(messages)
            else:  # a plain trio-websocket connection (tests serve one)
                for message in messages:
                    await self._websocket.send_message(message)
        except (trio_websocket.ConnectionClosed, LocalProtocolError):
            # LocalProtocolError: we already sent our close frame (a 1007 for the peer's
            # bad frame, say) and wsproto refuses anything after it.
            raise TransportClosed from None

    async def ping(self) -> None:
        try:
            await self._websocket.ping()  # waits for the matching pong
        except (trio_websocket.ConnectionClosed, LocalProtocolError):
            raise TransportClosed from None

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.aclose(code, reason)


class _StrictWebSocketConnection(trio_websocket.WebSocketConnection):
    """trio-websocket's connection, but a protocol error in the peer's data gets its close
    frame, and several messages go out in one write.

    wsproto reports a frame it refuses (a text frame that is not UTF-8: 1007) as a
    ``CloseConnection`` while the connection is still open; trio-websocket then drops the TCP
    stream without a close frame. Here the close frame with wsproto's code is sent first.
    """

    async def send_messages(self, messages: Sequence[str | bytes]) -> None:
        """``send_message`` for each, framed together and written with one ``send_all``
        (one syscall and, with TCP_NODELAY, one segment for an ``exited`` + ``closed``)."""
        if self._close_reason:
            raise trio_websocket.ConnectionClosed(self._close_reason)
        events = [TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m) for m in messages]
        data = b"".join(self._wsproto.send(event) for event in events)
        async with self._stream_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                raise trio_websocket.ConnectionClosed(self._close_reason) from None

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            try:
                await self._send(CloseConnection(code=event.code, reason=event.reason))
            except trio_websocket.ConnectionClosed:
                pass
        await super()._handle_close_connection_event(event)


class _Refused(Exception):
    """The handshake ends here: ``reason`` is what the log and the metrics say."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Answered(Exception):
    """A plain HTTP request was answered (no upgrade); ``reason`` names what was asked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebSocketService:
    """Accepts on any number of listeners and serves each connection (see the module docstring).

    Args:
        server: the session core the upgraded connections go to.
        tokens: who may connect (replaced in place on reload).
        options: admission limits and allowed origins.
        upgrades: False for a ``--metrics-listen`` port: plain HTTP only, and ``/metrics``
            needs no token there.
    """

    def __init__(self, server: Server, tokens: TokenStore, options: WebSocketOptions, *, upgrades: bool = True) -> None:
        self._server = server
        self._tokens = tokens
        self.options = options
        self._upgrades = upgrades
        self._pending = 0
        self._refused_since_log = 0
        self._last_refusal_log = -_REFUSAL_LOG_INTERVAL
        _metrics.watch_server(server)

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until cancelled. Connections already accepted live on in the server's own
        nursery until the server closes them."""
        handlers = self._server.connection_nursery
        assert handlers is not None, "the server must be running"
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handlers)
            task_status.started()

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream], handlers: trio.Nursery) -> None:
        backoff = _ACCEPT_BACKOFF_MIN
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # Out of descriptors (or any other accept error): wait and retry; the
                    # listener must outlive a flood. trio already retries ECONNABORTED & co.
                    if exc.errno in _OUT_OF_DESCRIPTORS:
                        self._note_refusal(f"accept failed: {exc.strerror}")
                    else:
                        log.warning("accept failed: %s", exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, _ACCEPT_BACKOFF_MAX)
                    continue
                backoff = _ACCEPT_BACKOFF_MIN
                if self._pending >= self.options.max_pending_handshakes:
                    _metrics.record_connection("refused", "pending_handshakes")
                    self._note_refusal("too many pending handshakes")
                    await _close_quietly(stream)
                    continue
                self._pending += 1
                handlers.start_soon(self._handle, stream)

    def _note_refusal(self, what: str) -> None:
        self._refused_since_log += 1
        now = trio.current_time()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            log_event(
                connections_log,
                logging.WARNING,
                f"connections refused: {what}",
                event="connection.refused",
                reason=what,
                count=self._refused_since_log,
                maxPendingHandshakes=self.options.max_pending_handshakes,
            )
            self._refused_since_log = 0
            self._last_refusal_log = now

    # --- one connection ----------------------------------------------------------------

    async def _handle(self, stream: trio.abc.Stream) -> None:
        who = peer_of(stream)
        peer = who.name
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._pending -= 1

        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(self.options.handshake_timeout):
                        transport = await self._handshake(stream, who, nursery)
                except _Answered as exc:
                    _metrics.record_connection("http", exc.reason)
                    nursery.cancel_scope.cancel()
                    return
                except (_Refused, trio.TooSlowError) as exc:
                    reason = exc.reason if isinstance(exc, _Refused) else "handshake timeout"
                    _metrics.record_connection("refused", reason.replace(" ", "_"))
                    # A bare connect-and-close (port scans, TCP probes) is no news at INFO.
                    level = logging.DEBUG if reason == _NO_REQUEST else logging.INFO
                    log_event(
                        connections_log, level, f"connection refused: {reason}",
                        event="connection.refused", peer=peer, reason=reason,
                    )  # fmt: skip
                    nursery.cancel_scope.cancel()
                    return
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed) as exc:
                    # A failed TLS handshake (no or a bad client certificate) is worth a line.
                    tls_failed = isinstance(exc.__cause__, ssl.SSLError) or isinstance(exc, ssl.SSLError)
                    reason = "tls handshake failed" if tls_failed else "connection broken"
                    _metrics.record_connection("refused", reason.replace(" ", "_"))
                    log_event(
                        connections_log, logging.INFO if tls_failed else logging.DEBUG, f"connection refused: {reason}",
                        event="connection.refused", peer=peer, reason=reason,
                    )  # fmt: skip
                    nursery.cancel_scope.cancel()
                    return
                release()
                _metrics.record_connection("accepted", "ok")
                log_event(
                    connections_log, logging.INFO, "connection accepted",
                    event="connection.accepted", peer=peer, token=transport.principal.name,
                )  # fmt: skip
                try:
                    await self._server.serve(transport)
                except Exception:
                    # A bug in one connection's handling must not take the server (and every
                    # other session) down with it: that connection ends, the rest serve on.
                    log.exception("connection from %s failed", peer)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_SECONDS):
                        await transport.close(_CLOSE_NORMAL, "")
                    nursery.cancel_scope.cancel()
        finally:
            release()
            await _close_quietly(stream)

    async def _handshake(self, stream: trio.abc.Stream, peer: Peer, nursery: trio.Nursery) -> WebSocketTransport:
        head = await read_head(stream)
        if not head:
            raise _Refused(_NO_REQUEST)
        if b"\r\n\r\n" not in head:
            if len(head) <= MAX_REQUEST_HEAD_BYTES:
                raise _Refused("closed mid-request")
            await respond(stream, HTTP_HEADERS_TOO_LARGE, b"request head too large\n")
            raise _Refused("request head too large")
        request = parse_head(head)
        if request is None:
            await respond(stream, HTTP_BAD_REQUEST, b"bad request\n")
            raise _Refused("bad request")
        headers = {name.lower(): value for name, value in request.headers}
        is_upgrade = b"websocket" in headers.get(b"upgrade", b"").lower()
        if not is_upgrade or not self._upgrades:
            await self._answer_http(stream, request)
            raise _Answered(_http_reason(request.target))
        connection = WSConnection(ConnectionType.SERVER)
        connection.receive_data(head)
        websocket = _StrictWebSocketConnection(
            stream,
            connection,
            message_queue_size=_MESSAGE_QUEUE_SIZE,
            max_message_size=self._server.config.max_message_bytes * _FRAME_LIMIT_FACTOR,
            receive_buffer_size=_RECEIVE_BUFFER_BYTES,
        )
        nursery.start_soon(websocket._reader_task)
        upgrade = await websocket._get_request()
        origin = headers.get(b"origin")
        host = headers.get(b"host")
        if not origin_allowed(
            None if origin is None else origin.decode("latin-1"),
            None if host is None else host.decode("latin-1"),
            self.options.allow_origins,
        ):
            await upgrade.reject(HTTP_FORBIDDEN, body=b"origin not allowed\n")
            raise _Refused("origin not allowed")
        token, subprotocol = presented_token(list(upgrade.headers), tuple(upgrade.proposed_subprotocols))
        principal = self._tokens.authenticate(token)
        if principal is None:
            await upgrade.reject(HTTP_UNAUTHORIZED, extra_headers=[(b"WWW-Authenticate", b"Bearer")], body=b"unauthorized\n")
            raise _Refused("unauthorized")
        accepted = await upgrade.accept(subprotocol=subprotocol)
        return WebSocketTransport(accepted, principal=principal, peer=peer.name, peer_host=peer.host)

    async def _answer_http(self, stream: trio.abc.Stream, request: h11.Request) -> None:
        target = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            await respond(stream, HTTP_METHOD_NOT_ALLOWED, b"method not allowed\n", head_only=False)
            return
        head_only = request.method == b"HEAD"
        if target == b"/healthz":
            if self._server.shutting_down:
                await respond(stream, HTTP_UNAVAILABLE, b"shutting down\n", head_only=head_only)
            else:
                await respond(stream, HTTP_OK, b"ok\n", head_only=head_only)
            return
        if target == b"/metrics":
            if self._upgrades:
                token, _ = presented_token(list(request.headers), ())
                if self._tokens.authenticate(token) is None:
                    await respond(
                        stream, HTTP_UNAUTHORIZED, b"unauthorized\n", head_only=head_only,
                        extra=[(b"WWW-Authenticate", b"Bearer")],
                    )  # fmt: skip
                    return
            body = _metrics.exposition()
            await respond(stream, HTTP_OK, body, head_only=head_only, content_type=_metrics.CONTENT_TYPE.encode())
            return
        await respond(stream, HTTP_NOT_FOUND, b"not found\n", head_only=head_only)


def _http_reason(target: bytes) -> str:
    path = target.split(b"?", 1)[0]
    return {b"/healthz": "healthz", b"/metrics": "metrics"}.get(path, "not found")


async def _close_quietly(stream: trio.abc.Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_SECONDS):
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@attrs.frozen
class Peer:
    """Who is on the other end of an accepted stream.

    Attributes:
        name: as a log line shows it: ``host:port`` of a TCP peer, ``unix:uid=N,pid=N`` of a
            unix-socket peer, ``unknown``.
        host: what the per-peer cap on detached sessions counts by: the TCP peer's address,
            ``unix:uid=N`` for a unix-socket peer; None when unknown.
    """

    name: str
    host: str | None


_UNKNOWN_PEER: Final = Peer("unknown", None)


def peer_of(stream: trio.abc.Stream) -> Peer:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return _UNKNOWN_PEER
    sock = inner.socket
    try:
        if sock.family == socket.AF_UNIX:
            pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            return Peer(f"unix:uid={uid},pid={pid}", f"unix:uid={uid}")
        host, port = sock.getpeername()[:2]
    except OSError:
        return _UNKNOWN_PEER
    return Peer(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", host)


@attrs.frozen
class BoundListeners:
    """What ``serve_websocket`` is started with: the listeners, and the port they got."""

    listeners: list[trio.SocketListener]

    @property
    def port(self) -> int:
        port: int = self.listeners[0].socket.getsockname()[1]
        return port


async def serve_websocket(
    server: Server,
    host: str,
    port: int,
    *,
    tokens: TokenStore | None = None,
    options: WebSocketOptions | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[BoundListeners] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (0 picks a port) until cancelled; ``wss://`` with ``ssl_context``.

    The token is ``server.config.token`` unless ``tokens`` is given. trio's ``SocketStream``
    sets TCP_NODELAY on every accepted socket.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    served: list[trio.abc.Listener[trio.abc.Stream]] = (
        list(listeners)
        if ssl_context is None
        else [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]
    )
    service = WebSocketService(server, tokens or TokenStore.single(server.config.token), options or WebSocketOptions())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, served)
        task_status.started(BoundListeners(listeners))
