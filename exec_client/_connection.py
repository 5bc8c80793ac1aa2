"""One client connection: a transport, the request tracker, a reader and a keepalive.

The reader routes every incoming frame through the sans-io ``RequestTracker``: answers
wake their caller, events go to ``on_notification`` (synchronously: the assembler needs no
I/O to take them). The keepalive pings the server every ``ping_interval`` and drops the
connection when a pong does not come within ``ping_timeout`` — a server that vanished
without a FIN is then resumed like any other cut. When the wire ends, every pending call
fails with ``ConnectionLost`` and ``on_closed`` is told why, once; a send that finds the
wire gone ends the connection at once, so no caller can retry on a dead connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc
import attrs

import protocol as p

from ._core import CLOSE_NORMAL, Answer, Event, Ignored, RequestTracker, Unreadable
from ._dialect import Dialect
from ._errors import ConnectionLost
from ._transport import ClientTransport, TransportClosed

logger: Final = logging.getLogger("exec_client")

# Keepalive defaults (both directions use the same: the server pings us too).
PING_INTERVAL_SECONDS: Final = 15.0
PING_TIMEOUT_SECONDS: Final = 15.0


@attrs.frozen
class CloseInfo:
    """Why a connection ended: the WebSocket close code (``None`` if none) and a reason."""

    code: int | None
    reason: str
    by_us: bool


@attrs.define
class _Waiter:
    done: anyio.Event = attrs.Factory(anyio.Event)
    answer: Answer | None = None
    lost: str | None = None


class Connection:
    """A JSON-RPC client connection over one ``ClientTransport``.

    Create it with ``Connection.open``, which runs its reader in the given task group.
    """

    def __init__(
        self,
        transport: ClientTransport,
        url: str,
        on_notification: Callable[[p.Notification], None],
        on_closed: Callable[[Connection, CloseInfo], None],
        on_unreadable: Callable[[str], None],
        *,
        ping_interval: float | None,
        ping_timeout: float,
    ) -> None:
        self.url = url
        self._transport = transport
        self._tracker = RequestTracker()
        self._waiters: dict[int, _Waiter] = {}
        self._on_notification = on_notification
        self._on_closed = on_closed
        self._on_unreadable = on_unreadable
        self._ping_interval = ping_interval if transport.can_ping else None
        self._ping_timeout = ping_timeout
        self._closing = False
        self.close_info: CloseInfo | None = None
        self.closed = anyio.Event()

    @property
    def supports_binary(self) -> bool:
        return self._transport.supports_binary

    @property
    def dialect(self) -> Dialect:
        """How this connection's wire looks (``NATIVE`` until ``use_dialect``)."""
        return self._tracker.dialect

    def use_dialect(self, dialect: Dialect) -> None:
        """Speak ``dialect`` from now on: called once, when ``initialize`` answered."""
        self._tracker.dialect = dialect
        if dialect.acks_at_once:
            self._transport.ack_at_once()

    @classmethod
    async def open(
        cls,
        task_group: anyio.abc.TaskGroup,
        transport: ClientTransport,
        url: str,
        *,
        on_notification: Callable[[p.Notification], None],
        on_closed: Callable[[Connection, CloseInfo], None],
        on_unreadable: Callable[[str], None],
        ping_interval: float | None = PING_INTERVAL_SECONDS,
        ping_timeout: float = PING_TIMEOUT_SECONDS,
    ) -> Connection:
        """Wrap a connected transport and start its reader (and keepalive) in ``task_group``."""
        connection = cls(
            transport,
            url,
            on_notification,
            on_closed,
            on_unreadable,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        task_group.start_soon(connection._run)
        return connection

    @property
    def is_closed(self) -> bool:
        return self.close_info is not None

    async def request(self, params: Any, method: str | None = None, *, raw: bool = False) -> Any:
        """Send a call and wait for its answer (decoded to its typed result, or JSON if ``raw``).

        Raises:
            ServerError: the server answered with an error (a subclass by code).
            ConnectionLost: the connection closed before the answer.
            ProtocolViolation: the answer was malformed.
            NotSupported: the connection's dialect cannot make this call (nothing was sent).
        """
        if self.close_info is not None:
            raise ConnectionLost(self.close_info.reason)
        request_id, frame = self._tracker.request(params, method, raw=raw)
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            await self._send(frame)
            await waiter.done.wait()
        finally:
            self._waiters.pop(request_id, None)
            self._tracker.abandon(request_id)
        if waiter.lost is not None:
            raise ConnectionLost(waiter.lost)
        assert waiter.answer is not None
        if waiter.answer.error is not None:
            raise waiter.answer.error
        return waiter.answer.result

    async def notify(self, params: Any) -> None:
        await self._send(p.encode_notification(params))

    async def aclose(self) -> None:
        """Close with 1000 (bounded in time); idempotent."""
        self._closing = True
        with anyio.CancelScope(shield=True):
            await self._transport.aclose(CLOSE_NORMAL, "client done")
        self._finish(CloseInfo(CLOSE_NORMAL, "closed by the client", by_us=True))

    async def abort(self, reason: str) -> None:
        """Drop the connection without a closing handshake (as a cut would)."""
        with anyio.CancelScope(shield=True):
            await self._transport.abort()
        self._finish(CloseInfo(None, reason, by_us=self._closing))

    # --- internals -------------------------------------------------------------------

    async def _send(self, frame: str) -> None:
        try:
            await self._transport.send(frame)
        except TransportClosed as exc:
            # Ended here and now: a retry must see a closed connection, not this one again.
            self._finish(CloseInfo(exc.code, exc.reason, by_us=self._closing))
            raise ConnectionLost(exc.reason) from None

    async def _run(self) -> None:
        async with anyio.create_task_group() as group:
            if self._ping_interval is not None:
                group.start_soon(self._keepalive, self._ping_interval)
            await self._reader()
            group.cancel_scope.cancel()

    async def _keepalive(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            if not await self._transport.ping(self._ping_timeout):
                logger.warning("exec_client: no pong from %s within %g s; dropping the connection", self.url, self._ping_timeout)
                await self.abort(f"no pong within {self._ping_timeout:g} s")
                return

    async def _reader(self) -> None:
        info: CloseInfo
        try:
            while True:
                frame = await self._transport.receive()
                self._dispatch(frame)
        except TransportClosed as exc:
            info = CloseInfo(exc.code, exc.reason, by_us=self._closing)
        except Exception as exc:  # a bug in dispatch must not leave requests hanging
            logger.exception("exec_client: reader failed")
            info = CloseInfo(None, f"client reader failed: {exc!r}", by_us=False)
            with anyio.CancelScope(shield=True):
                await self._transport.abort()
        self._finish(info)

    def _finish(self, info: CloseInfo) -> None:
        if self.close_info is not None:
            return
        self.close_info = info
        for waiter in self._waiters.values():
            if not waiter.done.is_set():
                waiter.lost = info.reason
                waiter.done.set()
        self.closed.set()
        self._on_closed(self, info)

    def _dispatch(self, frame: str | bytes | bytearray) -> None:
        incoming = self._tracker.receive(frame)
        if isinstance(incoming, Event):
            self._on_notification(incoming.notification)
        elif isinstance(incoming, Answer):
            waiter = self._waiters.get(incoming.request_id)
            if waiter is not None:
                waiter.answer = incoming
                waiter.done.set()
        elif isinstance(incoming, Unreadable):
            # A malformed frame cannot be answered (we are the client). If it names a
            # process, that process repairs whatever it carried with a read.
            logger.warning("exec_client: ignoring a malformed frame from the server: %s", incoming.message)
            if incoming.process_id is not None:
                self._on_unreadable(incoming.process_id)
        elif isinstance(incoming, Ignored):
            # E.g. the late answer to a call whose caller was cancelled: nothing is wrong.
            logger.debug("exec_client: ignoring %s", incoming.message)

