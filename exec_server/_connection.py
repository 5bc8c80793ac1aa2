"""The session core of one connection: decode, dispatch, answer, and push events.

One reader (this task) and one serialized writer per connection; requests run
concurrently in the connection's nursery so a long-poll never blocks a start. What
happens when the outbound queue is full is the delivery mode's business
(``Session.deliver``, ``OutboundQueue``); a bestEffort WebSocket whose writer is stuck
past ``slow_consumer_timeout`` is closed with 1008.
"""

from __future__ import annotations

import enum
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

import protocol as p
from protocol import _codex as codex_messages
from protocol import CloseCode, ErrorCode, ProtocolError

from . import _codex, _observe
from ._config import ServerConfig
from ._fs import FileOperations
from ._lifecycle import Lifecycle
from ._outbound import OutboundItem, OutboundQueue
from ._retention import MAX_READ_BYTES
from ._session import Session
from ._transport import MessageTransport, TransportClosed
from ._wire import encode_event

if TYPE_CHECKING:
    from .sandbox import Sandbox

log = logging.getLogger(__name__)

# A process/read answer's envelope and chunk framing on top of its base64 payload.
READ_ANSWER_OVERHEAD_BYTES: Final = 64 * 1024
# Answered by the reader itself, not in a task of their own: `initialize` because nothing
# may run before the session exists; the others because they never wait (the fork is
# synchronous) and a task per request is measurable on the one-shot path. Only
# `process/read` (long-poll) and `process/write` (a full stdin pipe) can wait.
_ANSWERED_IN_ORDER: Final = frozenset(
    {"initialize", "process/start", "process/release", "process/signal", "process/terminate", "process/list", "process/resize"}
)
# How long the close handshake may take once this connection is closing.
CLOSE_TIMEOUT_SECONDS: Final = 1.0


class ConnectionState(enum.Enum):
    OPEN = "open"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


_ALLOWED: Final = {
    (ConnectionState.OPEN, ConnectionState.DRAINING),
    (ConnectionState.OPEN, ConnectionState.CLOSING),
    (ConnectionState.DRAINING, ConnectionState.CLOSING),
    (ConnectionState.CLOSING, ConnectionState.CLOSED),
}


class ConnectionHost(Protocol):
    """What a connection needs from the server that serves it."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def shutting_down(self) -> bool: ...

    @property
    def sandbox(self) -> Sandbox: ...

    @property
    def default_cwd(self) -> str: ...

    def find_session(self, session_id: str) -> Session | None:
        """The live session with this id, if any."""

    async def new_session(self, peer: str | None) -> Session:
        """A new, started session. Raises ``ProtocolError`` (limits, shutting down)."""

    def initialize_result(self, session: Session, *, resumed: bool, binary_output: bool) -> p.InitializeResult:
        """The ``initialize`` answer for ``session``."""


class Connection:
    """Serves one transport until the peer leaves or the connection is closed.

    State table (``Connection.state``; every move goes through ``Connection._move``):

    ==========  ===========================================  ======================================
    state       meaning                                      leaves on
    ==========  ===========================================  ======================================
    OPEN        reading requests, writing answers and        the peer closed, or ``finish`` (drain)
                events                                       -> DRAINING; ``close`` (takeover,
                                                             slow consumer, missing pong, abort)
                                                             -> CLOSING
    DRAINING    the reader stopped; the writer delivers      the queue is delivered, or ``close``
                everything queued                            -> CLOSING
    CLOSING     the close handshake (bounded)                the transport closed -> CLOSED
    CLOSED      nothing more is read or written              (terminal)
    ==========  ===========================================  ======================================

    The first close code given (``close``/``finish``) is the one the peer sees.
    """

    def __init__(self, host: ConnectionHost, transport: MessageTransport) -> None:
        self._server = host
        self._config = host.config
        self._transport = transport
        self._lifecycle = Lifecycle("connection", ConnectionState.OPEN, _ALLOWED)
        self._queue = OutboundQueue(
            max_messages=self._config.outbound_queue_messages,
            max_output_bytes=self._config.outbound_queue_bytes,
            max_bytes=self._config.outbound_queue_bytes,
        )
        self._pending_write_bytes = 0
        self._session: Session | None = None
        self._generation = 0
        self._delivery = p.Delivery.BEST_EFFORT
        self._binary_output = False
        self._close_reason: tuple[int, str] | None = None
        # The close code the peer sent (None: no close frame, or not closed by the peer).
        self._peer_close_code: int | None = None
        self._reader_scope = trio.CancelScope()
        # Cancelled by `close` (abort, nothing more is written); replaced in `run`.
        self._connection_scope = trio.CancelScope()
        self._request_limit = trio.Semaphore(self._config.max_concurrent_requests)
        # When the writer began the message it is still writing (None: idle).
        self._writing_since: float | None = None
        # Codex dialect hook: set at an `initialize` without protocolVersion (exec_server/_codex.py).
        self._codex: _codex.CodexDialect | None = None
        self._files: FileOperations | None = None  # fs/* hook, made at the first fs/* request

    # --- lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._lifecycle.state

    def _move(self, new: ConnectionState) -> None:
        """The one place the connection's state changes (see the table in the class docstring)."""
        self._lifecycle.move(new)
        if new is ConnectionState.DRAINING:
            self._reader_scope.cancel()
        elif new is ConnectionState.CLOSING:
            self._connection_scope.cancel()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._connection_scope = nursery.cancel_scope
                if self.state is ConnectionState.CLOSING:
                    nursery.cancel_scope.cancel()  # closed before it ran
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._keepalive)
                with self._reader_scope:
                    async with trio.open_nursery() as requests:
                        await self._read_loop(requests)
                        requests.cancel_scope.cancel()
                # The reader ended: stop delivering to us, let the writer flush, then close.
                if self.state is ConnectionState.OPEN:
                    self._move(ConnectionState.DRAINING)
                if self._peer_close_code == CloseCode.NORMAL:
                    self._client_done()
                self._detach()
                self._queue.close_for_producers()
        finally:
            self._detach()
            self._queue.abandon()  # producers blocked on this dead queue move on
            if self.state is not ConnectionState.CLOSING:
                self._move(ConnectionState.CLOSING)
            code, reason = self._close_reason or (CloseCode.NORMAL, "")
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
                    await self._transport.close(code, reason)
            finally:
                self._move(ConnectionState.CLOSED)

    def close(self, code: int, reason: str) -> None:
        """Abort this connection now (takeover, peer gone). Idempotent; the first reason
        is the one the peer sees."""
        self._set_reason(code, reason)
        if self.state in (ConnectionState.OPEN, ConnectionState.DRAINING):
            self._move(ConnectionState.CLOSING)

    def finish(self, code: int, reason: str) -> None:
        """Stop reading, deliver everything queued, then close (graceful shutdown)."""
        self._set_reason(code, reason)
        if self.state is ConnectionState.OPEN:
            self._move(ConnectionState.DRAINING)

    def writer_stuck_for(self) -> float:
        """Seconds the writer has been writing one message (0 when idle)."""
        since = self._writing_since
        return 0.0 if since is None else trio.current_time() - since

    def give_up(self, code: int, reason: str) -> None:
        """Abort and release every producer waiting on this connection's queue."""
        self._detach()
        self._queue.abandon()
        self.close(code, reason)

    def _set_reason(self, code: int, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = (code, reason)
            # A clean close (1000) is routine; anything else is worth a line.
            log.log(logging.DEBUG if code == CloseCode.NORMAL else logging.INFO, "closing connection: %d %s", code, reason)

    def _detach(self) -> None:
        if self._session is not None:
            self._session.detach(self._generation)
            self._session = None

    def _client_done(self) -> None:
        if self._session is not None:
            self._session.client_done(self._generation)
            self._session = None

    async def _keepalive(self) -> None:
        """Ping the peer every ``ping_interval``; no pong within ``ping_timeout`` is a drop.

        A peer that vanished without a FIN (a cable, a suspended VM, a NAT that forgot us)
        would otherwise keep its session attached, and its TTL from starting, forever.
        """
        interval, timeout = self._config.ping_interval, self._config.ping_timeout
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(timeout) as waited:
                try:
                    await self._transport.ping()
                except TransportClosed:
                    return
            if waited.cancelled_caught:
                log.info("no pong within %.1fs: the peer is gone", timeout)
                self._detach()
                self._queue.abandon()
                self.close(CloseCode.PING_TIMEOUT, "ping timeout")
                return

    # --- writing -----------------------------------------------------------------------

    async def _enqueue(self, item: OutboundItem) -> None:
        try:
            await self._queue.put(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _write_loop(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._transport.drops_slow_consumers:
                nursery.start_soon(self._watch_for_slow_consumer)
            try:
                while True:
                    try:
                        item = await self._queue.get()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return
                    if isinstance(item, str | bytes):
                        message = item
                    elif self._codex is not None:  # Codex dialect hook
                        message = _codex.encode_event(item)
                    else:
                        message = encode_event(item, self._binary_output)
                    # A message is never cancelled half-way (that would corrupt the stream for
                    # the close frame after it): the watchdog handles a stuck write.
                    self._writing_since = trio.current_time()
                    await self._transport.send(message)
                    self._writing_since = None
            except TransportClosed:
                self.close(CloseCode.NORMAL, "peer closed")
            finally:
                nursery.cancel_scope.cancel()
                # Everything queued is written (or nothing more can be): on to the close.
                if self.state in (ConnectionState.OPEN, ConnectionState.DRAINING):
                    self._move(ConnectionState.CLOSING)

    async def _watch_for_slow_consumer(self) -> None:
        """Protocol §8: a bestEffort WebSocket whose writer is stuck past the timeout is closed
        with 1008, and its session detaches at once so that it can resume elsewhere.

        The message being written is allowed to finish, so the 1008 close frame reaches a
        peer that reads again; if it does not finish within another timeout, the connection
        is aborted.
        """
        timeout = self._config.slow_consumer_timeout
        while True:
            since = self._writing_since
            if since is None or self._delivery is not p.Delivery.BEST_EFFORT:
                await trio.sleep(timeout / 4)
                continue
            stuck_for = trio.current_time() - since
            if stuck_for < timeout:
                await trio.sleep(timeout - stuck_for)
                continue
            log.info("slow consumer: writer stuck for %.1fs; closing with 1008", stuck_for)
            _observe.slow_consumer_closed()
            self._set_reason(CloseCode.POLICY, "slow consumer")
            self._detach()
            self._queue.abandon()  # producers stop waiting on us; their events stay retained
            if self.state is ConnectionState.OPEN:
                self._move(ConnectionState.DRAINING)
            with trio.move_on_after(timeout):
                while self._writing_since == since:
                    await trio.sleep(timeout / 8)
                return  # the writer finished that message and sees the queue closed
            self.close(CloseCode.POLICY, "slow consumer")  # never finished: abort
            return

    # --- reading -----------------------------------------------------------------------

    async def _read_loop(self, requests: trio.Nursery) -> None:
        limit = self._config.max_message_bytes
        while True:
            try:
                raw = await self._transport.receive()
            except TransportClosed as closed:
                self._peer_close_code = closed.code
                return
            if isinstance(raw, bytes) and self._transport.supports_binary:
                # A WebSocket binary frame: only the server sends those (§11), so it is never a call.
                error = ProtocolError(ErrorCode.PARSE_ERROR, "parse error: a binary frame is not a call")
                await self._enqueue(p.encode_error(error))
                continue
            size = len(raw)
            if size * 4 > limit and isinstance(raw, str) and not raw.isascii():
                size = len(raw.encode("utf-8", "surrogatepass"))  # the limit is in bytes
            if size > limit:
                await self._enqueue(self._encode_error(_oversized(raw, size, limit)))
                continue
            if self._session is None and self._codex is None and _codex.is_codex_initialize(raw):
                self._codex = _codex.CodexDialect(self._server, max_mode=self._transport.principal.max_sandbox)  # Codex dialect hook
            try:
                message = self._decode(raw)
            except ProtocolError as exc:
                if exc.from_notification:
                    log.debug("ignored a bad notification: %s", exc.message)
                else:
                    await self._enqueue(self._encode_error(exc))
                continue
            if isinstance(message, p.Request):
                if message.method in _ANSWERED_IN_ORDER:
                    await self._answer(message)
                else:
                    try:
                        self._request_limit.acquire_nowait()
                    except trio.WouldBlock:
                        # Never block the reader: parked long-polls must not stop the write
                        # or terminate that would end them from being read.
                        error = ProtocolError(
                            ErrorCode.LIMIT_EXCEEDED,
                            f"limit exceeded: more than {self._config.max_concurrent_requests} requests in flight",
                            request_id=message.id,
                        )
                        await self._enqueue(self._encode_error(error))
                        continue
                    # Both dialects' writes count against the same budget.
                    writes = (p.WriteParams, codex_messages.WriteParams)
                    write_bytes = len(message.params.chunk) if isinstance(message.params, writes) else 0
                    # One write is always let through alone, whatever its size.
                    if self._pending_write_bytes and self._pending_write_bytes + write_bytes > self._config.max_pending_write_bytes:
                        self._request_limit.release()
                        error = ProtocolError(
                            ErrorCode.LIMIT_EXCEEDED,
                            f"limit exceeded: more than {self._config.max_pending_write_bytes} bytes of"
                            " process/write in flight",
                            request_id=message.id,
                        )
                        await self._enqueue(self._encode_error(error))
                        continue
                    self._pending_write_bytes += write_bytes
                    requests.start_soon(self._answer_and_release, message, write_bytes)
            # Notifications (`initialized`) and stray responses need no answer.

    async def _answer_and_release(self, request: p.Request, write_bytes: int) -> None:
        try:
            await self._answer(request)
        finally:
            self._pending_write_bytes -= write_bytes
            self._request_limit.release()

    async def _answer(self, request: p.Request) -> None:
        try:
            result = await self._dispatch(request)
        except ProtocolError as exc:
            await self._enqueue(self._encode_error(exc.with_request_id(request.id)))
            return
        except Exception:
            log.exception("internal error answering %s", request.method)
            error = ProtocolError(ErrorCode.INTERNAL_ERROR, "internal error", request_id=request.id)
            await self._enqueue(self._encode_error(error))
            return
        if result is not None:
            encode = p.encode_result if self._codex is None else _codex.encode_result  # Codex dialect hook
            await self._enqueue(encode(request.id, result))

    def _decode(self, raw: str | bytes) -> p.Message:
        if self._codex is not None:  # Codex dialect hook
            return _codex.decode(raw)
        try:
            return p.decode(raw)
        except ProtocolError as exc:
            # fs/* hook: our own clients' file operations, in Codex's shapes (exec_server/_fs.py).
            if exc.code == ErrorCode.METHOD_NOT_FOUND:
                fs_request = _codex.decode_fs_request(raw)
                if fs_request is not None:
                    return fs_request
            raise

    def _encode_error(self, error: ProtocolError) -> str:
        return p.encode_error(error) if self._codex is None else _codex.encode_error(error)  # Codex dialect hook

    async def _dispatch(self, request: p.Request) -> Any:
        params = request.params
        if request.method == "initialize":
            if self._codex is not None:  # Codex dialect hook
                return await self._initialize_codex(self._codex, params)
            return await self._initialize(params)
        session = self._session
        if session is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: call initialize first")
        if self._codex is not None:  # Codex dialect hook
            return await self._codex.dispatch(request, session, self._enqueue, functools.partial(self._answer_read, session))
        if request.method.startswith("fs/"):  # fs/* hook: the same file operations for our clients
            if self._files is None:
                self._files = FileOperations(self._server, max_mode=self._transport.principal.max_sandbox)
            return await self._files.dispatch(request.method, request.params)
        match request.method:
            case "process/start":
                begun = time.perf_counter()
                try:
                    result, process = session.start(params, max_mode=self._transport.principal.max_sandbox)
                except ProtocolError as exc:
                    _observe.start_refused(exc)
                    raise
                _observe.started(
                    self._transport,
                    session.id,
                    params,
                    result,
                    params.cwd or self._server.default_cwd,
                    self._server.sandbox.settings.default_mode.value,
                    time.perf_counter() - begun,
                )
                try:
                    # The response is queued before the process's first event can be.
                    await self._enqueue(p.encode_result(request.id, result))
                finally:
                    session.begin(process)  # even if cancelled: the process must be reaped
                return None
            case "process/read":
                await self._answer_read(session, params, lambda result: p.encode_result(request.id, result))
                return None
            case "process/write":
                return await session.write(params)
            case "process/signal":
                return session.signal(params)
            case "process/terminate":
                return session.terminate(params)
            case "process/resize":
                return session.resize(params)
            case "process/release":
                return session.release(params)
            case "process/list":
                return session.list()
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {request.method}")

    async def _answer_read(self, session: Session, params: p.ReadParams, encode: Callable[[p.ReadResult], str]) -> None:
        """Answer a ``process/read`` (either dialect) once the queue has room for the largest
        answer it can be: the answer is built only then, so unread answers cannot pile up."""
        process = await session.wait_readable(params)
        limit = min(params.max_bytes or MAX_READ_BYTES, MAX_READ_BYTES)
        try:
            await self._queue.put_made(
                limit * 4 // 3 + READ_ANSWER_OVERHEAD_BYTES, lambda: encode(session.read_now(process, params))
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the connection is gone: nobody to answer

    async def _initialize_codex(self, dialect: _codex.CodexDialect, params: Any) -> Any:
        """Codex dialect hook: `initialize {clientName, resumeSessionId}`, always lossless
        (its client cannot repair a gap in the event stream)."""
        if self._session is not None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: already initialized")
        session = await self._find_or_create_session(params.resume_session_id)
        self._delivery = p.Delivery.LOSSLESS
        self._queue.max_output_bytes = min(self._config.outbound_queue_bytes, self._config.retain_bytes // 4)
        self._generation = session.attach(self._delivery, self._queue, self.close)
        self._session = session
        return dialect.initialize_result(session)

    async def _initialize(self, params: p.InitializeParams) -> p.InitializeResult:
        if self._session is not None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: already initialized")
        if params.protocol_version != p.PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"unsupported protocolVersion {params.protocol_version} (this server speaks {p.PROTOCOL_VERSION})",
            )
        resumed = params.resume_session_id is not None
        session = await self._find_or_create_session(params.resume_session_id)
        self._delivery = params.delivery
        if params.delivery is p.Delivery.LOSSLESS:
            # What a lossless connection holds in flight must stay inside retention, so that
            # a cut connection loses nothing the resumed one cannot read back.
            self._queue.max_output_bytes = min(self._config.outbound_queue_bytes, self._config.retain_bytes // 4)
        self._binary_output = params.binary_output and self._transport.supports_binary
        self._generation = session.attach(params.delivery, self._queue, self.close)
        self._session = session
        if resumed:
            _observe.resumed(session.id, self._transport)
        return self._server.initialize_result(session, resumed=resumed, binary_output=self._binary_output)

    async def _find_or_create_session(self, resume_session_id: str | None) -> Session:
        """The session to resume, or a new one (both dialects' ``initialize``)."""
        server = self._server
        if resume_session_id is not None:
            found = server.find_session(resume_session_id)
            if found is None:
                raise ProtocolError(ErrorCode.INVALID_PARAMS, "unknown or expired session")
            return found
        if server.shutting_down:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server shutting down")
        return await server.new_session(self._transport.peer_host)


def _oversized(raw: str | bytes, size: int, limit: int) -> ProtocolError:
    # Never parsed whole: that is what the limit protects (the id is read from the head).
    request_id = p.sniff_request_id(raw)
    return ProtocolError(
        ErrorCode.LIMIT_EXCEEDED,
        f"limit exceeded: message of {size} bytes is over the {limit}-byte limit",
        request_id=request_id,
    )
