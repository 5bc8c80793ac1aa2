"""JSON-RPC error codes of the exec protocol and the one exception that carries them."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.IntEnum):
    """Every error code the protocol uses (protocol doc §3)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    UNKNOWN_PROCESS = -32001
    DUPLICATE_PROCESS = -32002
    PROCESS_RELEASED = -32003
    SHUTTING_DOWN = -32004
    LIMIT_EXCEEDED = -32005
    SANDBOX_UNAVAILABLE = -32006
    SPAWN_FAILED = -32007
    NOT_TERMINAL = -32008
    # fs/* (docs/protocol.md §13): the path does not exist / the OS refused the operation.
    FILE_NOT_FOUND = -32009
    FILE_FAILED = -32010


RequestId = int | str


class ProtocolError(Exception):
    """A protocol-level failure that is answered as a JSON-RPC error object.

    Args:
        code: the JSON-RPC error code.
        message: a short human-readable description.
        data: optional structured details (``{"errors": [...]}`` for -32602).
        request_id: the id of the request it answers, when it could be recovered
            from the offending message; ``None`` answers with ``"id": null``.
    """

    def __init__(
        self,
        code: ErrorCode | int,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        request_id: RequestId | None = None,
    ) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data
        self.request_id = request_id
        # Set by the decoder when the bad message was a notification: JSON-RPC says a
        # notification is never answered, not even with an error.
        self.from_notification = False

    def __repr__(self) -> str:
        return f"ProtocolError({self.code}, {self.message!r}, {self.data!r})"

    def with_request_id(self, request_id: RequestId | None) -> ProtocolError:
        return ProtocolError(self.code, self.message, self.data, request_id=request_id)
