"""The client's sans-io core: request correlation, close classification, resume backoff.

No sockets, no event loop, no clock: the I/O layer (``_connection.py``, written once on
anyio so that it runs on asyncio and trio alike) feeds it frames and close codes and does
what it answers. Together with ``protocol.Assembler`` (one per process) this is all of the
client's protocol logic; the async client and the sync facade share it, so there is one
copy of it.

- ``RequestTracker``: ``request(params)`` numbers a call and encodes it; ``receive(frame)``
  turns one incoming frame into exactly one ``Incoming`` (an answer to a call, an event, an
  unreadable frame of a process, or something to ignore). Its ``dialect`` (``_dialect.py``)
  translates to and from the wire: ours, or Codex's exec-server's — the tracker, and every
  caller above it, only ever see our messages.
- ``after_close(...)``: what a connection's end means for the session — resume it, or give
  up with a reason (the server shut down, the session was taken over, resume is off).
- ``Backoff``: the bounded delays between resume attempts and between request retries.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Final

import attrs

import protocol as p

from ._dialect import NATIVE, Dialect
from ._errors import ExecClientError, ProtocolViolation

# WebSocket close codes the client acts on (RFC 6455 §7.4.1; 4001 is the server's own).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_TAKEN_OVER: Final = 4001
# Why a session ends for good after each of those codes (the record's ``failure``).
SERVER_SHUT_DOWN: Final = "server shut down"
SESSION_TAKEN_OVER: Final = "session taken over by another connection"

_METHOD_OF_PARAMS: Final[dict[type, str]] = {
    params: method for method, (params, _result) in p.REQUEST_METHODS.items() if params is not p.EmptyParams
}


def decode_frame(frame: str | bytes) -> p.Message:
    """Decode one transport message of our own protocol into a protocol message.

    Text frames are JSON-RPC; binary frames are the negotiated binary ``process/output``
    framing (``initialize{binaryOutput: true}``), turned into the same notification a JSON
    event would be.

    Raises:
        ProtocolError: the frame is not a valid protocol message.
    """
    return NATIVE.decode_frame(frame)


def _process_id_of(frame: str | bytes | bytearray) -> str | None:
    """The ``params.processId`` of a frame that failed to decode, if it has one."""
    try:
        payload = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    params = payload.get("params") if isinstance(payload, dict) else None
    process_id = params.get("processId") if isinstance(params, dict) else None
    return process_id if isinstance(process_id, str) else None


@attrs.frozen
class Answer:
    """The answer to call ``request_id``: a decoded result, or the error to raise."""

    request_id: int
    result: Any = None
    error: ExecClientError | None = None


@attrs.frozen
class Event:
    """A notification from the server (``process/output``, ``process/exited``...)."""

    notification: p.Notification


@attrs.frozen
class Unreadable:
    """A frame that did not decode; ``process_id`` if it names a process (repair it by a read)."""

    process_id: str | None
    message: str


@attrs.frozen
class Ignored:
    """Something a client has no use for (a request from the server, a stray answer)."""

    message: str


Incoming = Answer | Event | Unreadable | Ignored


@attrs.frozen
class _Call:
    method: str
    params: Any
    raw: bool


class RequestTracker:
    """JSON-RPC request correlation for one connection (sans-io).

    Every call gets the next integer id; an answer is decoded to the call's result class
    (or kept as JSON data when the call asked for ``raw``). A call whose answer is no longer
    wanted is ``abandon``-ed, and its late answer is ``Ignored``.

    ``dialect`` is ``NATIVE`` until the connection's ``initialize`` answer says otherwise
    (the client then sets it, once, before any other call).
    """

    def __init__(self, dialect: Dialect = NATIVE) -> None:
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self.dialect = dialect

    def request(self, params: Any, method: str | None = None, *, raw: bool = False) -> tuple[int, str]:
        """Number and encode one call; returns ``(request_id, frame)``.

        Raises:
            NotSupported: the dialect has no way to make this call (nothing is recorded).
        """
        method = method or _METHOD_OF_PARAMS[type(params)]
        request_id = next(self._ids)
        frame = self.dialect.encode_request(request_id, params, method)
        self._calls[request_id] = _Call(method, params, raw)
        return request_id, frame

    def abandon(self, request_id: int) -> None:
        self._calls.pop(request_id, None)

    @property
    def outstanding(self) -> int:
        return len(self._calls)

    def receive(self, frame: str | bytes | bytearray) -> Incoming:
        """Classify one incoming frame."""
        try:
            message = self.dialect.decode_frame(frame)
        except p.ProtocolError as exc:
            return Unreadable(_process_id_of(frame), exc.message)
        if isinstance(message, p.Notification):
            return Event(message)
        if isinstance(message, p.Request):
            return Ignored(f"a request from the server: {message.method}")
        request_id = message.id
        call = self._calls.pop(request_id, None) if isinstance(request_id, int) else None
        if call is None or not isinstance(request_id, int):
            return Ignored(f"a response to unknown id {request_id!r}")
        if isinstance(message, p.ErrorResponse):
            return Answer(request_id, error=self.dialect.error(call.method, message.code, message.message, message.data))
        if call.raw:
            return Answer(request_id, result=message.result)
        try:
            return Answer(request_id, result=self.dialect.decode_result(call.method, call.params, message.result))
        except p.ProtocolError as exc:
            return Answer(request_id, error=ProtocolViolation(f"malformed {call.method} result: {exc.message}"))


@attrs.frozen
class Resume:
    """Reconnect with ``resumeSessionId`` for up to ``seconds``."""

    seconds: float


@attrs.frozen
class GiveUp:
    """The session is over: every in-flight record ends with ``failure = reason``."""

    reason: str


# Stop trying a little before the server forgets the session, so the last attempt can land.
RESUME_TTL_FRACTION: Final = 0.9


def after_close(code: int | None, reason: str, *, resume: bool, ttl_ms: int | None) -> Resume | GiveUp:
    """What the end of a connection the client did not close means for its session.

    1001 (the server is going away: its sessions do not survive it) and 4001 (another
    connection took the session over) end the session at once; otherwise it is resumed
    within the server's detached-session TTL, unless resume is off.
    """
    if code == CLOSE_GOING_AWAY:
        return GiveUp(SERVER_SHUT_DOWN)
    if code == CLOSE_TAKEN_OVER:
        return GiveUp(f"connection closed: {SESSION_TAKEN_OVER}")
    if not resume or not ttl_ms:
        return GiveUp(f"connection lost ({reason}); session resume is off")
    return Resume(ttl_ms / 1000 * RESUME_TTL_FRACTION)


@attrs.define
class Backoff:
    """Exponential delays from ``first`` to at most ``maximum`` seconds (never zero).

    Every retry loop in the client sleeps ``next()`` before trying again, so none can spin
    without yielding to the event loop.
    """

    first: float
    maximum: float
    _current: float = 0.0

    def next(self) -> float:
        self._current = self.first if self._current == 0.0 else min(self._current * 2, self.maximum)
        return self._current

    def reset(self) -> None:
        self._current = 0.0
