"""The Codex exec-server dialect, sans-io: its messages, its codec and its sandbox profile.

A client that calls ``initialize`` without ``protocolVersion`` speaks the dialect of the
Codex CLI's exec-server (``codex exec-server``; field sets as its 0.169 release puts them on
the wire). The method names are ours, the shapes are not: ``cwd`` and paths are ``file://``
URIs, there is no ``pid``/``signal``/``timedOut``, ``sandbox`` is a permissions profile, and
there are ``fs/*`` methods. This module only turns text into typed messages and back; what
the server does with them is ``exec_server/_codex.py``. The other direction — what a Codex
*server* sends to our client, decoded into our own messages — is the last section
(``decode_from_server`` and the ``decode_*_result`` functions; ``exec_client/_dialect.py``
uses them).

Decoding is strict about types and tolerant about fields: Codex's field set is fixed, and
fields a newer Codex adds are ignored (a wrong type is still -32602). The sandbox profile is
parsed by hand (``parse_sandbox``): its keys are snake_case and its unions are tagged by
``type``, and anything we do not know in it is refused rather than ignored, because an
ignored restriction would widen the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from typing import Any, Final

import attrs

from . import _codec
from ._codec import ErrorResponse, Message, Notification, Request, Response
from ._errors import ErrorCode, ProtocolError, RequestId
from ._codex_profile import (
    Access as Access,
    PermissionEntry as PermissionEntry,
    ProfileKind as ProfileKind,
    SandboxProfile as SandboxProfile,
    parse_sandbox as parse_sandbox,
)
from ._file_uri import path_from_uri as path_from_uri, uri_from_path as uri_from_path
from ._messages import (
    ClosedEvent,
    ExitedEvent,
    FieldError,
    OutputEvent,
    Stream,
    WriteStatus,
    _argv,
    _env,
    _process_id,
    _write_id,
)
from ._messages import OutputChunk as OurChunk, ReadResult as ReadResult_, TerminateResult as TerminateResult_
from ._messages import WriteResult as WriteResult_

# --- codes ------------------------------------------------------------------------------


class CodexErrorCode(enum.IntEnum):
    """The codes Codex's server answers with (its client maps -32004 to "not found")."""

    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    NOT_FOUND = -32004
    # A resume of a session another connection still holds (Codex 0.169's server).
    SESSION_ALREADY_ATTACHED = -32010


# Our codes → Codex's: its client knows only the JSON-RPC ones and -32004.
_CODE_OF: Final[dict[int, CodexErrorCode]] = {
    ErrorCode.PARSE_ERROR: CodexErrorCode.INVALID_REQUEST,
    ErrorCode.INVALID_REQUEST: CodexErrorCode.INVALID_REQUEST,
    ErrorCode.METHOD_NOT_FOUND: CodexErrorCode.METHOD_NOT_FOUND,
    ErrorCode.INVALID_PARAMS: CodexErrorCode.INVALID_PARAMS,
    ErrorCode.UNKNOWN_PROCESS: CodexErrorCode.INVALID_REQUEST,
    ErrorCode.DUPLICATE_PROCESS: CodexErrorCode.INVALID_REQUEST,
    ErrorCode.PROCESS_RELEASED: CodexErrorCode.INVALID_REQUEST,
    ErrorCode.FILE_NOT_FOUND: CodexErrorCode.NOT_FOUND,
}

# --- shared pieces ------------------------------------------------------------------------


class EnvInherit(str, enum.Enum):
    ALL = "all"
    CORE = "core"
    NONE = "none"


class CodexStream(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    PTY = "pty"


# Name patterns per envPolicy list, and their length: each is matched against every variable.
MAX_ENV_PATTERNS: Final = 256
MAX_ENV_PATTERN_LENGTH: Final = 256


def _patterns(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if len(value) > MAX_ENV_PATTERNS or any(len(pattern) > MAX_ENV_PATTERN_LENGTH for pattern in value):
        raise FieldError(attribute.name, f"at most {MAX_ENV_PATTERNS} patterns of at most {MAX_ENV_PATTERN_LENGTH} characters")


@attrs.frozen(kw_only=True)
class EnvPolicy:
    inherit: EnvInherit
    ignore_default_excludes: bool = False
    exclude: tuple[str, ...] = attrs.field(default=(), validator=_patterns)
    set: dict[str, str] = attrs.field(factory=dict, validator=_env)
    include_only: tuple[str, ...] = attrs.field(default=(), validator=_patterns)


@attrs.frozen(kw_only=True)
class ShellInfo:
    name: str
    path: str


@attrs.frozen(kw_only=True)
class EnvironmentInfo:
    shell: ShellInfo
    cwd: str | None = None
    user_home_dir: str | None = None
    platform_os: str = "linux"
    temp_dir: str | None = None
    executor_version: str | None = None
    prepend_path_dirs: tuple[str, ...] = ()
    temporary_directories: tuple[str, ...] = ()


# --- session ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InitializeParams:
    client_name: str
    resume_session_id: str | None = None


@attrs.frozen(kw_only=True)
class InitializeResult:
    session_id: str
    environment_info: EnvironmentInfo


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
    cwd: str
    env: dict[str, str] = attrs.field(factory=dict, validator=_env)
    env_policy: EnvPolicy | None = None
    tty: bool = False
    pipe_stdin: bool = False
    arg0: str | None = None
    # The raw permissions profile: ``parse_sandbox`` reads it strictly.
    sandbox: Any = None
    enforce_managed_network: bool = False
    managed_network: Any = None
    # Codex's bookkeeping (thread and tool-call ids): accepted, never interpreted.
    metadata: Any = None


@attrs.frozen(kw_only=True)
class StartResult:
    process_id: str
    sandbox_type: str


@attrs.frozen(kw_only=True)
class ReadParams:
    process_id: str = attrs.field(validator=_process_id)
    after_seq: int | None = None
    max_bytes: int | None = None
    wait_ms: int | None = None


@attrs.frozen(kw_only=True)
class OutputChunk:
    seq: int
    stream: CodexStream
    chunk: bytes


@attrs.frozen(kw_only=True)
class ReadResult:
    chunks: tuple[OutputChunk, ...]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool
    failure: str | None
    sandbox_denied: bool


@attrs.frozen(kw_only=True)
class WriteParams:
    process_id: str = attrs.field(validator=_process_id)
    chunk: bytes
    write_id: str | None = attrs.field(default=None, validator=_write_id)


@attrs.frozen(kw_only=True)
class WriteResult:
    status: str


class CodexSignal(str, enum.Enum):
    INTERRUPT = "interrupt"


@attrs.frozen(kw_only=True)
class SignalParams:
    process_id: str = attrs.field(validator=_process_id)
    signal: CodexSignal


@attrs.frozen(kw_only=True)
class TerminateParams:
    process_id: str = attrs.field(validator=_process_id)


@attrs.frozen(kw_only=True)
class TerminateResult:
    running: bool


# --- file system ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PathParams:
    """``fs/readFile``, ``fs/getMetadata``, ``fs/canonicalize``, ``fs/readDirectory``."""

    path: str
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class ReadFileResult:
    data_base64: str


@attrs.frozen(kw_only=True)
class WriteFileParams:
    path: str
    data_base64: str
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class AppendFileParams:
    """``fs/appendFile``, our extension (Codex has no append): ``offset`` must be the file's
    current size, so a repeated or reordered append is refused rather than duplicated."""

    path: str
    data_base64: str
    offset: int
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class CreateDirectoryParams:
    path: str
    recursive: bool | None = None
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class RemoveParams:
    path: str
    recursive: bool | None = None
    force: bool | None = None
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class CopyParams:
    source_path: str
    destination_path: str
    recursive: bool = False
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class WalkOptions:
    max_depth: int
    max_directories: int
    max_entries: int
    follow_directory_symlinks: bool = False


@attrs.frozen(kw_only=True)
class WalkParams:
    path: str
    options: WalkOptions
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class OpenParams:
    handle_id: str
    path: str
    sandbox: Any = None


@attrs.frozen(kw_only=True)
class HandleResult:
    handle_id: str


@attrs.frozen(kw_only=True)
class ReadBlockParams:
    handle_id: str
    offset: int
    len: int


@attrs.frozen(kw_only=True)
class ReadBlockResult:
    chunk: bytes
    eof: bool


@attrs.frozen(kw_only=True)
class CloseParams:
    handle_id: str


@attrs.frozen(kw_only=True)
class Metadata:
    is_directory: bool
    is_file: bool
    is_symlink: bool
    size: int
    created_at_ms: int
    modified_at_ms: int


@attrs.frozen(kw_only=True)
class CanonicalizeResult:
    path: str


@attrs.frozen(kw_only=True)
class DirectoryEntry:
    file_name: str
    is_directory: bool
    is_file: bool


@attrs.frozen(kw_only=True)
class ReadDirectoryResult:
    entries: tuple[DirectoryEntry, ...]


@attrs.frozen(kw_only=True)
class WalkEntry:
    path: str
    kind: str


@attrs.frozen(kw_only=True)
class WalkError:
    path: str
    message: str


@attrs.frozen(kw_only=True)
class WalkResult:
    entries: tuple[WalkEntry, ...]
    errors: tuple[WalkError, ...]
    truncated: bool


# --- method table -------------------------------------------------------------------------

REQUEST_PARAMS: Final[dict[str, type]] = {
    "initialize": InitializeParams,
    "environment/info": EmptyParams,
    "process/start": StartParams,
    "process/read": ReadParams,
    "process/write": WriteParams,
    "process/signal": SignalParams,
    "process/terminate": TerminateParams,
    "fs/readFile": PathParams,
    "fs/writeFile": WriteFileParams,
    "fs/appendFile": AppendFileParams,  # our extension: large uploads in bounded pieces
    "fs/createDirectory": CreateDirectoryParams,
    "fs/getMetadata": PathParams,
    "fs/canonicalize": PathParams,
    "fs/readDirectory": PathParams,
    "fs/walk": WalkParams,
    "fs/remove": RemoveParams,
    "fs/copy": CopyParams,
    "fs/open": OpenParams,
    "fs/readBlock": ReadBlockParams,
    "fs/close": CloseParams,
}
NOTIFICATION_PARAMS: Final[dict[str, type]] = {"initialized": EmptyParams}

# Strict types, unknown fields ignored (a newer Codex may add some).
converter: Final = _codec._make_converter(forbid_extra_keys=False)


def is_codex_initialize(text: str | bytes) -> bool:
    """Whether ``text`` is an ``initialize`` request in Codex's dialect (no ``protocolVersion``).

    Anything else (including malformed input) is left to our own decoder to answer.
    """
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict) or payload.get("method") != "initialize":
        return False
    params = payload.get("params")
    return isinstance(params, dict) and "protocolVersion" not in params


def decode_fs_request(text: str | bytes) -> Request | None:
    """An ``fs/*`` request from one of our own clients (same shapes as Codex's), else None.

    Raises:
        ProtocolError: it is an ``fs/*`` request, and a malformed one.
    """
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or not str(payload.get("method", "")).startswith("fs/"):
        return None
    message = decode(text)
    return message if isinstance(message, Request) else None


def _structure(value: Any, type_: type, path: str) -> Any:
    try:
        return converter.structure(value, type_)
    except Exception as exc:  # every structuring failure is an invalid-params answer
        errors = _codec.error_paths(exc, path)
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: {errors[0]}", {"errors": errors}) from None


def decode(text: str | bytes) -> Request | Notification:
    """Decode one message from a Codex client; responses from it are not expected.

    Raises:
        ProtocolError: with our codes (``encode_error`` maps them to Codex's).
    """
    payload = _codec.json_object(text)
    raw_id = payload.get("id")
    request_id = raw_id if _codec._valid_id(raw_id) else None
    method = payload.get("method")
    if not isinstance(method, str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: method must be a string", request_id=request_id)
    params = payload.get("params")
    if params is None:
        params = {}
    if request_id is None:
        if "id" in payload:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: id must be an integer or a string")
        notification_type = NOTIFICATION_PARAMS.get(method)
        error = ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method}")
        if notification_type is None:
            error.from_notification = True
            raise error
        try:
            return Notification(method, _structure(params, notification_type, "$.params"))
        except ProtocolError as exc:
            exc.from_notification = True
            raise
    params_type = REQUEST_PARAMS.get(method)
    if params_type is None:
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method}", request_id=request_id)
    try:
        return Request(request_id, method, _structure(params, params_type, "$.params"))
    except ProtocolError as exc:
        raise exc.with_request_id(request_id) from None


# Codex's server writes no "jsonrpc" member; neither do we in its dialect.
def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def encode_result(request_id: RequestId, result: Any) -> str:
    return _dumps({"id": request_id, "result": converter.unstructure(result)})


def encode_error(error: ProtocolError) -> str:
    """An error object, with our code mapped to Codex's."""
    code = int(_CODE_OF.get(error.code, CodexErrorCode.INTERNAL_ERROR))
    return _dumps({"id": error.request_id, "error": {"code": code, "message": error.message}})


def encode_output(process_id: str, seq: int, stream: str, chunk: bytes) -> str:
    """``process/output``: the hot path, formatted directly."""
    return (
        '{"method":"process/output","params":{"processId":'
        + json.dumps(process_id)
        + ',"seq":'
        + str(seq)
        + ',"stream":"'
        + stream
        + '","chunk":"'
        + base64.b64encode(chunk).decode("ascii")
        + '"}}'
    )


def encode_exited(process_id: str, seq: int, exit_code: int, sandbox_denied: bool) -> str:
    params = {"processId": process_id, "seq": seq, "exitCode": exit_code, "sandboxDenied": sandbox_denied}
    return _dumps({"method": "process/exited", "params": params})


def encode_closed(process_id: str, seq: int) -> str:
    return _dumps({"method": "process/closed", "params": {"processId": process_id, "seq": seq}})


# --- our client's side: what a Codex server sends, as our messages ------------------------
#
# ``exec_client`` drives a Codex exec-server through these (``exec_client/_dialect.py``
# picks them per method). Everything is translated into *our* message classes, so the
# client's single state machine (``RequestTracker`` + ``Assembler``) runs unchanged: an
# exited event has no ``signal``/``timedOut`` (a signal death is ``exitCode`` 128+n, as
# Codex reports it), a read has no ``lastSeq``/``retainedFromSeq``/``evictedBytes``. Types
# are checked exactly; unknown fields are ignored (a newer Codex may add some).

# Codex's messages for "unknown process" and "duplicate process" (both -32600 on its wire).
_UNKNOWN_PROCESS_PREFIX: Final = "unknown process id "
_DUPLICATE_PROCESS_SUFFIX: Final = " already exists"
# A read that returned this close to its maxBytes may have stopped there (no output chunk
# of Codex's comes near 1 MiB: it keeps only 1 MiB of a process's output in all).
READ_TRUNCATION_MARGIN: Final = 1024 * 1024
_OS_ERROR_RE: Final = re.compile(r"^(?P<strerror>.*) \(os error (?P<errno>\d+)\)$", re.DOTALL)


def _bad(what: str, path: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: {what} @ {path}")


def _field(params: dict[str, Any], name: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = params.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _bad(f"expected {expected}, got {type(value).__name__}", f"{path}.{name}")
    return value


def _seq(params: dict[str, Any], path: str, name: str = "seq") -> int:
    value = _field(params, name, int, path)
    if value < 0:
        raise _bad("expected a non-negative integer", f"{path}.{name}")
    return int(value)


def _chunk(params: dict[str, Any], path: str) -> bytes:
    try:
        return base64.b64decode(_field(params, "chunk", str, path), validate=True)
    except (binascii.Error, ValueError):
        raise _bad("invalid base64", f"{path}.chunk") from None


def _stream(params: dict[str, Any], path: str) -> Stream:
    value = _field(params, "stream", str, path)
    try:
        return Stream(CodexStream(value).value)
    except ValueError:
        raise _bad(f"unknown stream {value[:20]!r}", f"{path}.stream") from None


def _optional_bool(params: dict[str, Any], name: str, path: str) -> bool | None:
    value = params.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"expected bool, got {type(value).__name__}", f"{path}.{name}")
    return value


def _decode_output(params: dict[str, Any]) -> OutputEvent:
    path = "$.params"
    return OutputEvent(
        process_id=_field(params, "processId", str, path),
        seq=_seq(params, path),
        stream=_stream(params, path),
        chunk=_chunk(params, path),
    )


def _decode_exited(params: dict[str, Any]) -> ExitedEvent:
    path = "$.params"
    return ExitedEvent(
        process_id=_field(params, "processId", str, path),
        seq=_seq(params, path),
        exit_code=_field(params, "exitCode", int, path),
        signal=None,
        timed_out=False,
        # Absent from an older Codex: the client then asks one read for it (docs §9).
        sandbox_denied=_optional_bool(params, "sandboxDenied", path),
    )


def _decode_closed(params: dict[str, Any]) -> ClosedEvent:
    path = "$.params"
    return ClosedEvent(process_id=_field(params, "processId", str, path), seq=_seq(params, path))


_EVENT_DECODERS: Final[dict[str, Any]] = {
    "process/output": _decode_output,
    "process/exited": _decode_exited,
    "process/closed": _decode_closed,
}


def decode_from_server(text: str | bytes | bytearray) -> Message:
    """Decode one frame a Codex server sent to our client.

    Responses keep a raw ``result`` (``decode_*_result`` below know the method); process
    events become our ``OutputEvent``/``ExitedEvent``/``ClosedEvent``; any other
    notification is returned with its raw params (the client ignores it).

    Raises:
        ProtocolError: not JSON, not a JSON-RPC message, or a process event of the wrong shape.
    """
    if isinstance(text, bytes | bytearray):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "a binary frame (Codex's server sends none)")
    payload = _codec.json_object(text, "message")
    method = payload.get("method")
    raw_id = payload.get("id")
    if method is None:
        if not _codec._valid_id(raw_id) and raw_id is not None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid response: id must be an integer or a string")
        error = payload.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int) or not isinstance(error.get("message"), str):
                raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid response: malformed error object")
            return ErrorResponse(raw_id, error["code"], error["message"], error.get("data"))
        if "result" not in payload or raw_id is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid response: no result and no error")
        return Response(raw_id, payload["result"])
    if not isinstance(method, str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid message: method must be a string")
    params = payload.get("params")
    if isinstance(raw_id, str | int) and _codec._valid_id(raw_id):
        return Request(raw_id, method, params)
    decoder = _EVENT_DECODERS.get(method)
    if decoder is None:
        return Notification(method, params)
    if not isinstance(params, dict):
        raise _bad("expected an object", "$.params")
    return Notification(method, decoder(params))


def _result_object(raw: Any, method: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _bad(f"a {method} result must be an object", "$.result")
    return raw


def decode_start_result(raw: Any) -> StartResult:
    """``{processId, sandboxType}`` (Codex sends no ``pid``)."""
    result = _result_object(raw, "process/start")
    return StartResult(
        process_id=_field(result, "processId", str, "$.result"),
        sandbox_type=_field(result, "sandboxType", str, "$.result"),
    )


def decode_read_result(raw: Any, *, after_seq: int, max_bytes: int | None) -> ReadResult_:
    """A Codex read (of ``process/read {afterSeq, maxBytes}``) as our ``ReadResult``.

    Codex's read has no ``lastSeq``: it returns every retained chunk after ``afterSeq`` up
    to ``maxBytes``, and ``nextSeq`` is the seq after the last one it returned (or the
    process's next seq). A read that may have stopped at ``maxBytes`` (within
    ``READ_TRUNCATION_MARGIN`` of it) says ``lastSeq = nextSeq`` — more may follow, so the
    assembler reads again; any other says ``lastSeq = nextSeq - 1``, so a closed process's
    read is its terminal state (Codex pushes nothing that was dropped while no connection
    was attached). Nor has it ``retainedFromSeq``: Codex keeps the newest 1 MiB of a
    process's output and evicts from the front, so the chunks a read returns are a suffix
    of the output. Seqs missing before the first of them that the exit (and, with no
    chunks, the close) cannot explain were evicted; the result then says so with
    ``retainedFromSeq`` = the first seq it holds, and the record gets ``output_lost``
    (with an unknown count).
    """
    path = "$.result"
    result = _result_object(raw, "process/read")
    chunks_raw = _field(result, "chunks", list, path)
    chunks: list[OurChunk] = []
    for index, item in enumerate(chunks_raw):
        where = f"{path}.chunks[{index}]"
        if not isinstance(item, dict):
            raise _bad("expected an object", where)
        chunks.append(OurChunk(seq=_seq(item, where), stream=_stream(item, where), chunk=_chunk(item, where)))
    next_seq = _seq(result, path, "nextSeq")
    exited = _field(result, "exited", bool, path)
    closed = _field(result, "closed", bool, path)
    exit_code = result.get("exitCode")
    if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)):
        raise _bad(f"expected int, got {type(exit_code).__name__}", f"{path}.exitCode")
    failure = result.get("failure")
    if failure is not None and not isinstance(failure, str):
        raise _bad(f"expected str, got {type(failure).__name__}", f"{path}.failure")
    first = chunks[0].seq if chunks else next_seq
    explained = (1 if exited else 0) + (1 if closed and not chunks else 0)
    evicted = first - (after_seq + 1) > explained
    returned = sum(len(chunk.chunk) for chunk in chunks)
    maybe_truncated = bool(chunks) and max_bytes is not None and returned + READ_TRUNCATION_MARGIN > max_bytes
    return ReadResult_(
        chunks=tuple(chunks),
        next_seq=next_seq,
        exited=exited,
        closed=closed,
        exit_code=exit_code,
        failure=failure,
        sandbox_denied=_optional_bool(result, "sandboxDenied", path),
        retained_from_seq=first if evicted else 1,
        last_seq=next_seq if maybe_truncated else next_seq - 1,
    )


_WRITE_STATUSES: Final = {status.value: status for status in WriteStatus}


def decode_write_result(raw: Any) -> WriteResult_:
    """``{status}``; Codex's ``starting`` (a write before the start finished) cannot happen to
    our client, which writes only after ``process/start`` answered."""
    status = _field(_result_object(raw, "process/write"), "status", str, "$.result")
    if status not in _WRITE_STATUSES:
        raise _bad(f"unexpected write status {status[:20]!r}", "$.result.status")
    return WriteResult_(status=_WRITE_STATUSES[status])


def decode_terminate_result(raw: Any) -> TerminateResult_:
    return TerminateResult_(running=_field(_result_object(raw, "process/terminate"), "running", bool, "$.result"))


def translate_error(method: str, code: int, message: str, data: Any) -> tuple[int, str, Any]:
    """A Codex error answer in our codes (``protocol.ErrorCode``), as far as it can be told.

    Codex answers -32600 for an unknown and a duplicate process alike (told apart by its
    message), -32004 for a missing file, and -32603 with ``"<strerror> (os error N)"`` for
    an OS failure: of a spawn (our -32007 with ``data {errno, strerror}``) or of an
    ``fs/*`` operation (our -32010 with ``data {errno}``). Anything else keeps its code.
    """
    if code == CodexErrorCode.NOT_FOUND:
        return ErrorCode.FILE_NOT_FOUND, message, data
    if code == CodexErrorCode.INVALID_REQUEST:
        if message.startswith(_UNKNOWN_PROCESS_PREFIX):
            return ErrorCode.UNKNOWN_PROCESS, message, data
        if method == "process/start" and message.endswith(_DUPLICATE_PROCESS_SUFFIX):
            return ErrorCode.DUPLICATE_PROCESS, message, data
    if code == CodexErrorCode.INTERNAL_ERROR and (match := _OS_ERROR_RE.match(message)):
        number = int(match.group("errno"))
        if method == "process/start":
            return ErrorCode.SPAWN_FAILED, message, {"errno": number, "strerror": match.group("strerror")}
        if method.startswith("fs/"):
            return ErrorCode.FILE_FAILED, message, {"errno": number, "strerror": match.group("strerror")}
    return code, message, data
