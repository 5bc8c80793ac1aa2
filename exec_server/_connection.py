"""The session core of one connection: decode, dispatch, answer, and push events.

One reader (this task) and one serialized writer per connection; requests run
concurrently in the connection's nursery so a long-poll never blocks a start. What
happens when the outbound queue is full is the delivery mode's business
(``Session.deliver``, ``OutboundQueue``); a bestEffort WebSocket whose writer is stuck
past ``slow_consumer_timeout`` is closed with 1008.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import trio

import protocol as p
from protocol import ErrorCode, ProtocolError

from ._outbound import OutboundItem, OutboundQueue
from ._retention import MAX_READ_BYTES
from ._session import Session
from ._transport import MessageTransport, TransportClosed
from ._wire import encode_event

if TYPE_CHECKING:
    from ._server import Server

log = logging.getLogger(__name__)

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TAKEN_OVER: Final = 4001
# A process/read answer's envelope and chunk framing on top of its base64 payload.
READ_ANSWER_OVERHEAD_BYTES: Final = 64 * 1024
# Answered by the reader itself, not in a task of their own: `initialize` because nothing
# may run before the session exists; the others because they never wait (the fork is
# synchronous) and a task per request is measurable on the one-shot path. Only
# `process/read` (long-poll) and `process/write` (a full stdin pipe) can wait.
_ANSWERED_IN_ORDER: Final = frozenset(
    {"initialize", "process/start", "process/release", "process/signal", "process/terminate", "process/list"}
)


class Connection:
    """Serves one transport until the peer leaves or the connection is closed."""

    def __init__(self, server: Server, transport: MessageTransport) -> None:
        self._server = server
        self._config = server.config
        self._transport = transport
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
        self._reader_scope = trio.CancelScope()
        # Cancelled by `close` (abort, nothing more is written); replaced in `run`.
        self._connection_scope = trio.CancelScope()
        self._request_limit = trio.Semaphore(self._config.max_concurrent_requests)
        # When the writer began the message it is still writing (None: idle).
        self._writing_since: float | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        self._server.connections.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._connection_scope = nursery.cancel_scope
                nursery.start_soon(self._write_loop)
                with self._reader_scope:
                    async with trio.open_nursery() as requests:
                        await self._read_loop(requests)
                        requests.cancel_scope.cancel()
                # The reader ended: stop delivering to us, let the writer flush, then close.
                self._detach()
                self._queue.close_for_producers()
        finally:
            self._detach()
            self._queue.abandon()  # producers blocked on this dead queue move on (BUGS.md #10)
            code, reason = self._close_reason or (CLOSE_NORMAL, "")
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self._transport.close(code, reason)
            finally:
                self._server.connection_ended(self)  # only once the close handshake is over

    def close(self, code: int, reason: str) -> None:
        """Abort this connection now (takeover, peer gone). Idempotent; the first reason
        is the one the peer sees."""
        self._set_reason(code, reason)
        self._connection_scope.cancel()

    def finish(self, code: int, reason: str) -> None:
        """Stop reading, deliver everything queued, then close (graceful shutdown)."""
        self._set_reason(code, reason)
        self._reader_scope.cancel()

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
            log.info("closing connection: %d %s", code, reason)

    def _detach(self) -> None:
        if self._session is not None:
            self._session.detach(self._generation)
            self._session = None

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
                    message = item if isinstance(item, str | bytes) else encode_event(item, self._binary_output)
                    # A message is never cancelled half-way (that would corrupt the stream for
                    # the close frame after it): the watchdog handles a stuck write.
                    self._writing_since = trio.current_time()
                    await self._transport.send(message)
                    self._writing_since = None
            except TransportClosed:
                self.close(CLOSE_NORMAL, "peer closed")
            finally:
                nursery.cancel_scope.cancel()

    async def _watch_for_slow_consumer(self) -> None:
        """Protocol §7: a bestEffort WebSocket whose writer is stuck past the timeout is closed
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
            self._set_reason(CLOSE_POLICY, "slow consumer")
            self._detach()
            self._queue.abandon()  # producers stop waiting on us; their events stay retained
            self._reader_scope.cancel()
            with trio.move_on_after(timeout):
                while self._writing_since == since:
                    await trio.sleep(timeout / 8)
                return  # the writer finished that message and sees the queue closed
            self._connection_scope.cancel()  # never finished: abort
            return

    # --- reading -----------------------------------------------------------------------

    async def _read_loop(self, requests: trio.Nursery) -> None:
        limit = self._config.max_message_bytes
        while True:
            try:
                raw = await self._transport.receive()
            except TransportClosed:
                return
            size = len(raw)
            if size * 4 > limit and isinstance(raw, str) and not raw.isascii():
                size = len(raw.encode("utf-8", "surrogatepass"))  # the limit is in bytes
            if size > limit:
                await self._enqueue(p.encode_error(_oversized(raw, size, limit)))
                continue
            try:
                message = p.decode(raw)
            except ProtocolError as exc:
                if exc.from_notification:
                    log.debug("ignored a bad notification: %s", exc.message)
                else:
                    await self._enqueue(p.encode_error(exc))
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
                        await self._enqueue(p.encode_error(error))
                        continue
                    write_bytes = len(message.params.chunk) if isinstance(message.params, p.WriteParams) else 0
                    # One write is always let through alone, whatever its size.
                    if self._pending_write_bytes and self._pending_write_bytes + write_bytes > self._config.max_pending_write_bytes:
                        self._request_limit.release()
                        error = ProtocolError(
                            ErrorCode.LIMIT_EXCEEDED,
                            f"limit exceeded: more than {self._config.max_pending_write_bytes} bytes of"
                            " process/write in flight",
                            request_id=message.id,
                        )
                        await self._enqueue(p.encode_error(error))
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
            await self._enqueue(p.encode_error(exc.with_request_id(request.id)))
            return
        except Exception:
            log.exception("internal error answering %s", request.method)
            error = ProtocolError(ErrorCode.INTERNAL_ERROR, "internal error", request_id=request.id)
            await self._enqueue(p.encode_error(error))
            return
        if result is not None:
            await self._enqueue(p.encode_result(request.id, result))

    async def _dispatch(self, request: p.Request) -> Any:
        params = request.params
        if request.method == "initialize":
            return await self._initialize(params)
        session = self._session
        if session is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: call initialize first")
        match request.method:
            case "process/start":
                result, process = session.start(params)
                try:
                    # The response is queued before the process's first event can be.
                    await self._enqueue(p.encode_result(request.id, result))
                finally:
                    session.begin(process)  # even if cancelled: the process must be reaped
                return None
            case "process/read":
                process = await session.wait_readable(params)
                # Room for the largest answer it can be is waited for before it is built.
                limit = min(params.max_bytes or MAX_READ_BYTES, MAX_READ_BYTES)
                try:
                    await self._queue.put_made(
                        limit * 4 // 3 + READ_ANSWER_OVERHEAD_BYTES,
                        lambda: p.encode_result(request.id, session.read_now(process, params)),
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the connection is gone: nobody to answer
                return None
            case "process/write":
                return await session.write(params)
            case "process/signal":
                return session.signal(params)
            case "process/terminate":
                return session.terminate(params)
            case "process/release":
                return session.release(params)
            case "process/list":
                return session.list()
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {request.method}")

    async def _initialize(self, params: p.InitializeParams) -> p.InitializeResult:
        if self._session is not None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: already initialized")
        if params.protocol_version != p.PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"unsupported protocolVersion {params.protocol_version} (this server speaks {p.PROTOCOL_VERSION})",
            )
        server = self._server
        resumed = params.resume_session_id is not None
        if resumed:
            session = server.sessions.get(params.resume_session_id)  # type: ignore[arg-type]
            if session is None:
                raise ProtocolError(ErrorCode.INVALID_PARAMS, "unknown or expired session")
        else:
            if server.shutting_down:
                raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server shutting down")
            session = await server.new_session()
        self._delivery = params.delivery
        if params.delivery is p.Delivery.LOSSLESS:
            # What a lossless connection holds in flight must stay inside retention, so that
            # a cut connection loses nothing the resumed one cannot read back.
            self._queue.max_output_bytes = min(self._config.outbound_queue_bytes, self._config.retain_bytes // 4)
        self._binary_output = params.binary_output and self._transport.supports_binary
        self._generation = session.attach(params.delivery, self._queue, self.close)
        self._session = session
        return server.initialize_result(session, resumed=resumed, binary_output=self._binary_output)


def _oversized(raw: str | bytes, size: int, limit: int) -> ProtocolError:
    # Never parsed whole: that is what the limit protects (the id is read from the head).
    request_id = p.sniff_request_id(raw)
    return ProtocolError(
        ErrorCode.LIMIT_EXCEEDED,
        f"limit exceeded: message of {size} bytes is over the {limit}-byte limit",
        request_id=request_id,
    )
