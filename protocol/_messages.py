"""Every message of the exec protocol as a frozen attrs class.

Field names are snake_case here and camelCase on the wire; the codec maps them
(``_codec.wire_name``). Semantic checks (id syntax, absolute paths, ranges) are attrs
validators, so a message object that exists is a valid one.
"""

from __future__ import annotations

import enum
import os.path
import re
from typing import Any, Final

import attrs

PROTOCOL_VERSION: Final = 1
MAX_PROCESS_ID_LENGTH: Final = 128
# An idempotency key, remembered by the server: a uuid needs 32.
MAX_WRITE_ID_LENGTH: Final = 128
_PROCESS_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_ARGV_ITEMS: Final = 65_536
_MAX_MS: Final = 7 * 24 * 3600 * 1000  # a week: larger waits/timeouts are client bugs
# Bounds of a request's resource limits (``ResourceLimits``). The floors leave room for the
# sandbox launcher itself (its descriptors, its memory) before the command runs.
MIN_MEMORY_BYTES: Final = 1024 * 1024
MAX_MEMORY_BYTES: Final = 1 << 50
MAX_PIDS: Final = 4_194_304  # the kernel's PID_MAX_LIMIT
MAX_CPU_SECONDS: Final = 10_000_000
MAX_FILE_SIZE_BYTES: Final = 1 << 62
MAX_TERMINAL_DIMENSION: Final = 10_000  # rows or cols of a pseudo-terminal (the kernel's is u16)
MIN_OPEN_FILES: Final = 64
MAX_OPEN_FILES: Final = 1 << 20  # the kernel's default fs.nr_open


class FieldError(ValueError):
    """A semantic validation failure of one field; ``field`` is the snake_case name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- validators -----------------------------------------------------------------------


def _process_id(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _PROCESS_ID_RE.fullmatch(value):
        raise FieldError(attribute.name, "processId must be 1-128 characters of [A-Za-z0-9._:-]")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise FieldError(attribute.name, "must be >= 0")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise FieldError(attribute.name, "must be > 0")


def _milliseconds(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 0 <= value <= _MAX_MS:
        raise FieldError(attribute.name, f"must be between 0 and {_MAX_MS}")


def _between(low: int, high: int) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and not low <= value <= high:
            raise FieldError(attribute.name, f"must be between {low} and {high}")

    return check


def _path(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # A relative path is resolved on the server (against its working directory).
    if value is None:
        return
    if not value or "\0" in value:
        raise FieldError(attribute.name, "must be a non-empty path without NUL")


def _absolute_paths(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for path in value:
        if not os.path.isabs(path) or "\0" in path:
            raise FieldError(attribute.name, f"must be absolute paths, got {path!r}")


# Field metadata: the codec leaves the field out of what it encodes while it has its default.
OMIT_IF_DEFAULT: Final = "omit_if_default"
# readOnlySubpaths: relative to each writable root; the launcher binds each existing one.
MAX_READ_ONLY_SUBPATHS: Final = 16
DEFAULT_READ_ONLY_SUBPATHS: Final = (".git", ".codex", ".agents")


def _relative_subpaths(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if len(value) > MAX_READ_ONLY_SUBPATHS:
        raise FieldError(attribute.name, f"at most {MAX_READ_ONLY_SUBPATHS} entries")
    for path in value:
        parts = path.split("/")
        if not path or os.path.isabs(path) or "\0" in path or ".." in parts or len(path) > 4096:
            raise FieldError(attribute.name, f"must be relative paths without '..', got {path!r}")


def _write_id(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and len(value) > MAX_WRITE_ID_LENGTH:
        raise FieldError(attribute.name, f"writeId must be at most {MAX_WRITE_ID_LENGTH} characters")


def _argv(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise FieldError(attribute.name, "argv must be a non-empty list")
    if len(value) > _MAX_ARGV_ITEMS:
        raise FieldError(attribute.name, "argv is too long")
    if not value[0]:
        raise FieldError(attribute.name, "argv[0] must not be empty")
    if any("\0" in arg for arg in value):
        raise FieldError(attribute.name, "argv must not contain NUL characters")


def _env(_inst: object, attribute: attrs.Attribute[Any], value: dict[str, str] | None) -> None:
    if value is None:
        return
    for key, val in value.items():
        if not key or "=" in key or "\0" in key or "\0" in val:
            raise FieldError(attribute.name, f"invalid environment variable {key!r}")


# --- enums ------------------------------------------------------------------------------


class Delivery(str, enum.Enum):
    BEST_EFFORT = "bestEffort"
    LOSSLESS = "lossless"


class SandboxMode(str, enum.Enum):
    NONE = "none"
    READ_ONLY = "readOnly"
    WORKSPACE_WRITE = "workspaceWrite"


class Stream(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    PTY = "pty"  # a tty: true process: its terminal's output (stdout and stderr merged)


class SignalName(str, enum.Enum):
    INTERRUPT = "interrupt"
    TERMINATE = "terminate"
    KILL = "kill"
    HANGUP = "hangup"


class WriteStatus(str, enum.Enum):
    ACCEPTED = "accepted"
    STDIN_CLOSED = "stdinClosed"
    UNKNOWN_PROCESS = "unknownProcess"


class ProcessState(str, enum.Enum):
    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


# --- shared pieces ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SandboxPolicy:
    mode: SandboxMode
    writable_roots: tuple[str, ...] = attrs.field(default=(), validator=_absolute_paths)
    network: bool = False
    # None: DEFAULT_READ_ONLY_SUBPATHS; () lifts the carve-outs.
    read_only_subpaths: tuple[str, ...] | None = attrs.field(
        default=None, validator=_relative_subpaths, metadata={OMIT_IF_DEFAULT: True}
    )


@attrs.frozen(kw_only=True)
class ResourceLimits:
    """Kernel-enforced limits of one command (``process/start`` ``limits``); None = the server's default."""

    memory_bytes: int | None = attrs.field(default=None, validator=_between(MIN_MEMORY_BYTES, MAX_MEMORY_BYTES))
    pids: int | None = attrs.field(default=None, validator=_between(1, MAX_PIDS))
    cpu_seconds: int | None = attrs.field(default=None, validator=_between(1, MAX_CPU_SECONDS))
    file_size_bytes: int | None = attrs.field(default=None, validator=_between(1, MAX_FILE_SIZE_BYTES))
    open_files: int | None = attrs.field(default=None, validator=_between(MIN_OPEN_FILES, MAX_OPEN_FILES))


@attrs.frozen(kw_only=True)
class TerminalSize:
    """The window size of a ``tty: true`` process's pseudo-terminal."""

    rows: int = attrs.field(validator=_between(1, MAX_TERMINAL_DIMENSION))
    cols: int = attrs.field(validator=_between(1, MAX_TERMINAL_DIMENSION))


@attrs.frozen(kw_only=True)
class Denial:
    """One action the sandbox blocked: ``blocker`` like ``fs.make_reg``, ``target`` a path or address."""

    blocker: str
    target: str


@attrs.frozen(kw_only=True)
class Usage:
    user_cpu_ms: float
    system_cpu_ms: float
    max_rss_kb: int


@attrs.frozen(kw_only=True)
class OutputChunk:
    seq: int = attrs.field(validator=_positive)
    stream: Stream
    chunk: bytes


# --- session ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InitializeParams:
    client_name: str
    protocol_version: int
    client_version: str | None = None
    resume_session_id: str | None = None
    delivery: Delivery = Delivery.BEST_EFFORT
    # Opt-in to binary WebSocket frames for process/output (see docs/protocol.md).
    binary_output: bool = False


@attrs.frozen(kw_only=True)
class Capabilities:
    push_events: bool
    lossless: bool
    release: bool
    sandbox: dict[str, Any]
    binary_output: bool = False
    # process/start tty: true and process/resize (a server without it refuses tty).
    pty: bool = False


@attrs.frozen(kw_only=True)
class Limits:
    max_message_bytes: int
    max_processes_per_session: int
    retain_bytes: int
    retain_total_bytes: int
    retain_after_close_ms: int
    detached_session_ttl_ms: int
    slow_consumer_timeout_ms: int


@attrs.frozen(kw_only=True)
class InitializeResult:
    session_id: str
    server_name: str
    server_version: str
    protocol_version: int
    capabilities: Capabilities
    limits: Limits
    resumed: bool = False


@attrs.frozen(kw_only=True)
class InitializedParams:
    pass


@attrs.frozen(kw_only=True)
class EmptyParams:
    pass


@attrs.frozen(kw_only=True)
class EmptyResult:
    pass


# --- process methods --------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StartParams:
    process_id: str = attrs.field(validator=_process_id)
    argv: tuple[str, ...] = attrs.field(validator=_argv)
    cwd: str | None = attrs.field(default=None, validator=_path)
    env: dict[str, str] | None = attrs.field(default=None, validator=_env)
    inherit_env: bool = True
    pipe_stdin: bool = False
    timeout_ms: int | None = attrs.field(default=None, validator=_milliseconds)
    sandbox: SandboxPolicy | None = None
    retain_bytes: int | None = attrs.field(default=None, validator=_positive)
    retain_after_close_ms: int | None = attrs.field(default=None, validator=_milliseconds)
    limits: ResourceLimits | None = None
    # A pseudo-terminal as stdin/stdout/stderr and controlling terminal (output: stream "pty").
    tty: bool = attrs.field(default=False, metadata={OMIT_IF_DEFAULT: True})
    size: TerminalSize | None = attrs.field(default=None, metadata={OMIT_IF_DEFAULT: True})


@attrs.frozen(kw_only=True)
class StartResult:
    process_id: str
    pid: int
    sandbox_type: str


@attrs.frozen(kw_only=True)
class ReadParams:
    process_id: str = attrs.field(validator=_process_id)
    after_seq: int = attrs.field(default=0, validator=_non_negative)
    max_bytes: int | None = attrs.field(default=None, validator=_positive)
    wait_ms: int = attrs.field(default=0, validator=_milliseconds)


@attrs.frozen(kw_only=True)
class StreamBytes:
    stdout: int = 0
    stderr: int = 0
    # A tty: true process's output (stream "pty"); off the wire at 0, like the PTY seam.
    pty: int = attrs.field(default=0, metadata={OMIT_IF_DEFAULT: True})


@attrs.frozen(kw_only=True)
class ReadResult:
    chunks: tuple[OutputChunk, ...]
    next_seq: int
    exited: bool
    closed: bool
    exit_code: int | None = None
    # Defaults for servers that follow only the base protocol (they may omit these; docs §12).
    retained_from_seq: int = 1
    signal: str | None = None
    timed_out: bool = False
    sandbox_denied: bool | None = None
    failure: str | None = None
    # Extensions of this server (docs/protocol.md): everything a client needs to finish a
    # record from a read alone, and the exact size of what retention evicted.
    last_seq: int | None = None
    duration_ms: float | None = None
    usage: Usage | None = None
    denials: tuple[Denial, ...] = ()
    sandbox_denied_source: str | None = None
    evicted_bytes: StreamBytes | None = None
    # "memory" | "pids" | "cpu" | "fileSize": the resource limit the kernel says was hit.
    limit_exceeded: str | None = None


@attrs.frozen(kw_only=True)
class WriteParams:
    process_id: str = attrs.field(validator=_process_id)
    chunk: bytes = b""
    write_id: str | None = attrs.field(default=None, validator=_write_id)
    eof: bool = False


@attrs.frozen(kw_only=True)
class WriteResult:
    status: WriteStatus


@attrs.frozen(kw_only=True)
class SignalParams:
    process_id: str = attrs.field(validator=_process_id)
    signal: SignalName


@attrs.frozen(kw_only=True)
class SignalResult:
    delivered: bool


@attrs.frozen(kw_only=True)
class TerminateParams:
    process_id: str = attrs.field(validator=_process_id)
    grace_ms: int = attrs.field(default=2000, validator=_milliseconds)


@attrs.frozen(kw_only=True)
class TerminateResult:
    running: bool


@attrs.frozen(kw_only=True)
class ResizeParams:
    """``process/resize``: a ``tty: true`` process's new window size (answered with ``{}``)."""

    process_id: str = attrs.field(validator=_process_id)
    rows: int = attrs.field(validator=_between(1, MAX_TERMINAL_DIMENSION))
    cols: int = attrs.field(validator=_between(1, MAX_TERMINAL_DIMENSION))


@attrs.frozen(kw_only=True)
class ReleaseParams:
    process_id: str = attrs.field(validator=_process_id)


@attrs.frozen(kw_only=True)
class ProcessInfo:
    process_id: str
    pid: int
    argv: tuple[str, ...]
    state: ProcessState
    next_seq: int


@attrs.frozen(kw_only=True)
class ListResult:
    processes: tuple[ProcessInfo, ...]


# --- pushed events ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class OutputEvent:
    process_id: str
    seq: int
    stream: Stream
    chunk: bytes


@attrs.frozen(kw_only=True)
class ExitedEvent:
    process_id: str
    seq: int
    exit_code: int
    signal: str | None
    timed_out: bool
    # None only when decoding a legacy server's event that lacks the field.
    sandbox_denied: bool | None = None
    duration_ms: float | None = None
    usage: Usage | None = None
    denials: tuple[Denial, ...] = ()
    sandbox_denied_source: str | None = None
    limit_exceeded: str | None = None


@attrs.frozen(kw_only=True)
class ClosedEvent:
    process_id: str
    seq: int


ProcessEvent = OutputEvent | ExitedEvent | ClosedEvent
