"""Dialects: how one connection's requests, answers and events look on the wire (sans-io).

The client has one protocol logic — ``RequestTracker`` (``_core.py``) and one ``Assembler``
per process — and it speaks in our messages (``protocol``). A dialect sits between that
logic and the wire and translates, nothing more:

- ``NATIVE``: our own protocol (docs/protocol.md §§1–12); the identity.
- ``CodexDialect`` (``_codex_dialect.py``, loaded only for such a peer): the exec-server protocol of the Codex CLI (``codex exec-server``, and any
  server that answers ``initialize`` without ``protocolVersion``; docs/protocol.md §13.3).
  Requests: ``cwd`` as a ``file://`` URI (resolved against the server's working directory
  from ``initialize`` when relative or absent), ``env`` as a map with an ``envPolicy`` that
  inherits the server's environment (ours adds to it too), ``tty``, ``arg0: null``. Answers
  and events: without our extensions (no ``pid``, ``signal``, ``timedOut``, ``lastSeq``…),
  Codex's error codes mapped onto ours. What Codex cannot do is refused before anything is
  sent, with a one-line ``NotSupported`` (a timeout, resource limits, closing stdin,
  signals other than ``interrupt``/``kill``, ``process/list``/``release``). A sandbox
  policy is sent as Codex's permissions profile (``permissions_profile``).

Which dialect a connection speaks is decided once, by its ``initialize`` answer
(``dialect_for``): the client always sends our ``initialize`` (Codex's server ignores the
fields it does not know); an answer with ``protocolVersion`` is ours, one without it is
Codex's. ``open_client(dialect="codex")`` skips the detection and sends Codex's own
``initialize {clientName, resumeSessionId}`` (for a peer that would reject our fields).

Every dialect takes any method it has no translation for as it is (``fs/*``,
``environment/info``): Codex's shapes are ours there, so a file layer written against the
connection's request path works on both.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import protocol as p

from ._errors import ProtocolViolation, ServerError
from ._info import ServerInfo

NATIVE_NAME: Final = "exec-server"
CODEX_NAME: Final = "codex"


class Dialect(Protocol):
    """What ``RequestTracker`` asks of a dialect (all pure functions of their inputs)."""

    @property
    def name(self) -> str:
        """``"exec-server"`` or ``"codex"``."""
        ...

    @property
    def can_close_stdin(self) -> bool:
        """``process/write {eof: true}`` exists (a command's stdin can be closed)."""
        ...

    @property
    def can_list(self) -> bool:
        """``process/list`` exists."""
        ...

    @property
    def acks_at_once(self) -> bool:
        """The peer does not set TCP_NODELAY: ACK what it sends at once (``_websocket.py``)."""
        ...

    @property
    def min_gap_grace(self) -> float:
        """The least seconds a hole in a process's seqs waits for a reordered event."""
        ...

    def encode_request(self, request_id: int, params: Any, method: str) -> str:
        """The frame of one call. Raises ``NotSupported`` if the peer cannot do it."""
        ...

    def decode_frame(self, frame: str | bytes | bytearray) -> p.Message:
        """One incoming frame, with events as our classes. Raises ``ProtocolError``."""
        ...

    def decode_result(self, method: str, params: Any, raw: Any) -> Any:
        """The typed result of call ``method`` sent with ``params``. Raises ``ProtocolError``."""
        ...

    def error(self, method: str, code: int, message: str, data: Any) -> ServerError:
        """The exception for an error answer to ``method``."""
        ...


class NativeDialect:
    """Our own protocol: the identity translation."""

    name: Final = NATIVE_NAME
    can_close_stdin: Final = True
    can_list: Final = True
    acks_at_once: Final = False
    min_gap_grace: Final = 0.0

    def encode_request(self, request_id: int, params: Any, method: str) -> str:
        return p.encode_request(request_id, params, method)

    def decode_frame(self, frame: str | bytes | bytearray) -> p.Message:
        if isinstance(frame, bytes | bytearray):
            return p.Notification("process/output", p.decode_binary_output(frame))
        return p.decode(frame, tolerant=True)

    def decode_result(self, method: str, params: Any, raw: Any) -> Any:
        if method not in p.REQUEST_METHODS:
            return raw  # fs/*, environment/info: the caller decodes (as with raw=True)
        return p.decode_result(method, raw)

    def error(self, method: str, code: int, message: str, data: Any) -> ServerError:
        return ServerError.from_error(code, message, data)


NATIVE: Final = NativeDialect()


def dialect_for(raw: Any, *, forced: str | None, resume_session_id: str | None) -> tuple[Dialect, ServerInfo]:
    """The dialect of a connection and what its ``initialize`` answer says, from that answer.

    ``forced``: ``"codex"`` or ``"exec-server"`` skips the detection (``None``: detect).

    Raises:
        ProtocolViolation: the answer is not an object with a string ``sessionId``.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("sessionId"), str):
        raise ProtocolViolation("malformed initialize result: no sessionId")
    if forced == NATIVE_NAME or (forced is None and "protocolVersion" in raw):
        return NATIVE, ServerInfo.from_result(raw)
    from ._codex_dialect import codex_dialect_for  # only a Codex peer needs its message shapes

    return codex_dialect_for(raw, resume_session_id=resume_session_id)

