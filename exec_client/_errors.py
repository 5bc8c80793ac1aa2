"""The client's exceptions: one base class, connection failures, and server errors by code."""

from __future__ import annotations

import errno as errno_module
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode

if TYPE_CHECKING:
    from protocol import TerminalRecord


class ExecClientError(Exception):
    """Base class of every error this package raises."""


class ConnectionFailed(ExecClientError):
    """The server could not be reached, or refused us (bad token, handshake failure)."""


class InitializeRefused(ConnectionFailed):
    """The server was reached but refused ``initialize`` (e.g. an unknown or expired session)."""


class ConnectionLost(ExecClientError):
    """The connection dropped and the session could not be resumed."""


class CommandFailed(ExecClientError):
    """``check=True``: the command exited non-zero, timed out, was denied by the sandbox, or
    its record could not be completed. ``record`` is the whole terminal record."""

    def __init__(self, record: TerminalRecord) -> None:
        if record.failure is not None:
            why = f"failed: {record.failure}"
        elif record.timed_out:
            why = "timed out"
        elif record.sandbox_denied:
            why = f"was denied by the sandbox (exit {record.exit_code})"
        else:
            why = f"exited with {record.exit_code}"
        super().__init__(f"command {list(record.argv)!r} {why}")
        self.record = record


class PtyUnsupported(ExecClientError):
    """``tty=True`` asked of a server without pseudo-terminals (``capabilities.pty`` is false).

    Raised by ``start``/``run`` before anything is sent: nothing was started.
    """


class ProtocolViolation(ExecClientError):
    """The server sent something that does not follow the protocol."""


class NotSupported(ExecClientError):
    """The server's dialect has no way to do what was asked (nothing was sent).

    E.g. a timeout, a sandbox policy or closing stdin on Codex's exec-server.
    """


class OutputOverrun(ExecClientError):
    """A streaming handle was not iterated fast enough and its chunk buffer overflowed.

    The terminal record (``handle.wait()``) is unaffected; only the live stream is cut.
    """


class RemoteFileError(ExecClientError, OSError):
    """A file operation (``read_file``, ``upload``, ``remove``...) failed on the server.

    It is an ``OSError`` too: ``errno`` is the OS error the server reported (``EROFS`` or
    ``EACCES`` for a write the sandbox refused; ``None`` when the operation itself refused,
    e.g. a directory where a file was expected), ``strerror`` the server's message and
    ``filename`` the remote path. ``code`` is the JSON-RPC error code, if there was one.
    """

    def __init__(self, errno: int | None, message: str, filename: str, code: int | None = None) -> None:
        OSError.__init__(self, errno, message, filename)
        self.code = code

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class RemoteFileNotFound(RemoteFileError, FileNotFoundError):
    """The remote path does not exist (``ENOENT``)."""


class RemotePermissionError(RemoteFileError, PermissionError):
    """The server's sandbox or the file's permissions refused it: ``errno`` is ``EROFS``
    (outside the writable roots), ``EACCES`` or ``EPERM``."""


class ServerError(ExecClientError):
    """The server answered a request with a JSON-RPC error.

    Attributes:
        code: the JSON-RPC error code (``protocol.ErrorCode`` for known ones).
        message: the server's message.
        data: the server's structured details, if any.
    """

    code: int

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data

    @staticmethod
    def from_error(code: int, message: str, data: Any = None) -> ServerError:
        """The most specific subclass for ``code``."""
        cls = _BY_CODE.get(code, ServerError)
        return cls(code, message, data)


class InvalidParams(ServerError):
    """-32602: the server rejected the request's parameters."""


class UnknownProcess(ServerError):
    """-32001: the process was never started in this session, or expired."""


class DuplicateProcess(ServerError):
    """-32002: the processId is already used in this session."""


class ProcessReleased(ServerError):
    """-32003: the process's terminal record was already released."""


class ServerShuttingDown(ServerError):
    """-32004: the server is draining and starts no new processes."""


class LimitExceeded(ServerError):
    """-32005: a server limit (processes, message size, retained bytes) was hit."""


class SandboxUnavailable(ServerError):
    """-32006: the server cannot enforce the requested sandbox; the command did not run."""


class SpawnFailed(ServerError):
    """-32007: the command could not be started (``errno``/``strerror`` say why)."""

    @property
    def errno(self) -> int | None:
        """The errno as a number (the server may send the number or its name, "ENOENT")."""
        value = self.data.get("errno") if isinstance(self.data, dict) else None
        if isinstance(value, str):
            value = getattr(errno_module, value, None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def strerror(self) -> str | None:
        value = self.data.get("strerror") if isinstance(self.data, dict) else None
        return value if isinstance(value, str) else None


class NotTerminal(ServerError):
    """-32008: release of a process that has not closed."""


_BY_CODE: dict[int, type[ServerError]] = {
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.UNKNOWN_PROCESS: UnknownProcess,
    ErrorCode.DUPLICATE_PROCESS: DuplicateProcess,
    ErrorCode.PROCESS_RELEASED: ProcessReleased,
    ErrorCode.SHUTTING_DOWN: ServerShuttingDown,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.SANDBOX_UNAVAILABLE: SandboxUnavailable,
    ErrorCode.SPAWN_FAILED: SpawnFailed,
    ErrorCode.NOT_TERMINAL: NotTerminal,
}
