"""The Codex exec-server dialect, sans-io: its messages, its codec and its sandbox profile.

A client that calls ``initialize`` without ``protocolVersion`` speaks the dialect of the
Codex CLI's exec-server (``codex exec-server``; field sets as its 0.169 release puts them on
the wire). The method names are ours, the shapes are not: ``cwd`` and paths are ``file://``
URIs, there is no ``pid``/``signal``/``timedOut``, ``sandbox`` is a permissions profile, and
there are ``fs/*`` methods. This module only turns text into typed messages and back; what
the server does with them is ``exec_server/_codex.py``.

Decoding is strict about types and tolerant about fields: Codex's field set is fixed, and
fields a newer Codex adds are ignored (a wrong type is still -32602). The sandbox profile is
parsed by hand (``parse_sandbox``): its keys are snake_case and its unions are tagged by
``type``, and anything we do not know in it is refused rather than ignored, because an
ignored restriction would widen the sandbox.
"""

from __future__ import annotations

import base64
import enum
import json
from typing import Any, Final

import attrs

from . import _codec
from ._codec import Notification, Request
from ._errors import ErrorCode, ProtocolError, RequestId
from ._codex_profile import (
    Access as Access,
    PermissionEntry as PermissionEntry,
    ProfileKind as ProfileKind,
    SandboxProfile as SandboxProfile,
    parse_sandbox as parse_sandbox,
)
from ._file_uri import path_from_uri as path_from_uri, uri_from_path as uri_from_path
from ._messages import FieldError, _argv, _env, _process_id, _write_id

# --- codes ------------------------------------------------------------------------------


class CodexErrorCode(enum.IntEnum):
    """The codes Codex's server answers with (its client maps -32004 to "not found")."""

    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    NOT_FOUND = -32004


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
    try:
        payload = json.loads(text, parse_constant=_codec._reject_constant)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.PARSE_ERROR, "parse error: not valid JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: expected a JSON object")
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
