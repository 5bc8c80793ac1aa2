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
import urllib.parse
from typing import Any, Final

import attrs

from . import _codec
from ._codec import Notification, Request
from ._errors import ErrorCode, ProtocolError, RequestId
from ._messages import FieldError, _argv, _env, _process_id

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


@attrs.frozen(kw_only=True)
class EnvPolicy:
    inherit: EnvInherit
    ignore_default_excludes: bool = False
    exclude: tuple[str, ...] = ()
    set: dict[str, str] = attrs.field(factory=dict, validator=_env)
    include_only: tuple[str, ...] = ()


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
    write_id: str | None = None


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


# --- file:// URIs -------------------------------------------------------------------------


def path_from_uri(uri: str, field: str = "path") -> str:
    """``file:///a%20b`` → ``/a b``; anything but an absolute local ``file:`` URI is refused.

    Raises:
        FieldError: not a ``file:`` URI, a remote host, a relative or NUL-bearing path.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file":
        raise FieldError(field, f"expected a file:// URI, got {uri[:80]!r}")
    if parts.netloc not in ("", "localhost"):
        raise FieldError(field, f"file URI names a remote host {parts.netloc[:80]!r}")
    if parts.query or parts.fragment:
        raise FieldError(field, "file URI must not have a query or fragment")
    path = urllib.parse.unquote(parts.path, errors="surrogateescape")
    if not path.startswith("/") or "\0" in path:
        raise FieldError(field, "file URI must name an absolute path")
    return path


def uri_from_path(path: str) -> str:
    return "file://" + urllib.parse.quote(path, safe="/", errors="surrogateescape")


# --- the permissions profile --------------------------------------------------------------


class Access(str, enum.Enum):
    READ = "read"
    WRITE = "write"
    NONE = "none"


class ProfileKind(str, enum.Enum):
    MANAGED = "managed"
    DISABLED = "disabled"
    EXTERNAL = "external"


@attrs.frozen(kw_only=True)
class PermissionEntry:
    """One ``file_system.entries`` item: ``special`` names a Codex special path (``root``,
    ``project_roots``, ``slash_tmp``, ``tmpdir``, …) with an optional ``subpath``; otherwise
    ``path`` is absolute."""

    access: Access
    special: str | None = None
    subpath: str | None = None
    path: str | None = None
    skip_if_missing: bool = False


@attrs.frozen(kw_only=True)
class SandboxProfile:
    kind: ProfileKind
    file_system_unrestricted: bool = False
    entries: tuple[PermissionEntry, ...] = ()
    network_enabled: bool = False
    cwd: str | None = None
    workspace_roots: tuple[str, ...] = ()


_SPECIAL_KINDS: Final = frozenset({"root", "project_roots", "slash_tmp", "tmpdir", "current_working_directory"})
_MAX_ENTRIES: Final = 4096


class _ProfileError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{message} @ {path}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ProfileError(path, "expected an object")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _ProfileError(path, "expected a string")
    return value


def _uri_path(value: Any, path: str) -> str:
    try:
        return path_from_uri(_string(value, path))
    except FieldError as exc:
        raise _ProfileError(path, str(exc)) from None


def _entry(raw: Any, path: str) -> PermissionEntry:
    item = _object(raw, path)
    access_raw = _string(item.get("access"), f"{path}.access")
    try:
        access = Access(access_raw)
    except ValueError:
        raise _ProfileError(f"{path}.access", f"unknown access {access_raw!r}") from None
    skip = item.get("missing_path_behavior") == "skip"
    target = _object(item.get("path"), f"{path}.path")
    kind = _string(target.get("type"), f"{path}.path.type")
    if kind == "special":
        value = _object(target.get("value"), f"{path}.path.value")
        special = _string(value.get("kind"), f"{path}.path.value.kind")
        if special not in _SPECIAL_KINDS:
            raise _ProfileError(f"{path}.path.value.kind", f"unknown special path {special!r}")
        subpath = value.get("subpath")
        if subpath is not None:
            subpath = _string(subpath, f"{path}.path.value.subpath")
            if subpath.startswith("/") or "\0" in subpath or ".." in subpath.split("/"):
                raise _ProfileError(f"{path}.path.value.subpath", "subpath must be relative and stay inside")
        return PermissionEntry(access=access, special=special, subpath=subpath, skip_if_missing=skip)
    if kind == "path":
        return PermissionEntry(access=access, path=_uri_path(target.get("path"), f"{path}.path.path"), skip_if_missing=skip)
    raise _ProfileError(f"{path}.path.type", f"unsupported path type {kind!r}")


def parse_sandbox(raw: Any, path: str = "$.params.sandbox") -> SandboxProfile | None:
    """The ``sandbox`` field of a Codex request, or None when it is null.

    Raises:
        ProtocolError: -32602 naming the offending member.
    """
    if raw is None:
        return None
    try:
        context = _object(raw, path)
        permissions = _object(context.get("permissions"), f"{path}.permissions")
        kind_raw = _string(permissions.get("type"), f"{path}.permissions.type")
        try:
            kind = ProfileKind(kind_raw)
        except ValueError:
            raise _ProfileError(f"{path}.permissions.type", f"unknown permissions type {kind_raw!r}") from None
        cwd = context.get("cwd")
        cwd_path = _uri_path(cwd, f"{path}.cwd") if cwd is not None else None
        roots_raw = context.get("workspaceRoots") or []
        if not isinstance(roots_raw, list) or len(roots_raw) > _MAX_ENTRIES:
            raise _ProfileError(f"{path}.workspaceRoots", "expected a list of file URIs")
        roots = tuple(_uri_path(root, f"{path}.workspaceRoots[{i}]") for i, root in enumerate(roots_raw))
        if kind is not ProfileKind.MANAGED:
            return SandboxProfile(kind=kind, cwd=cwd_path, workspace_roots=roots)
        network = permissions.get("network", "restricted")
        if network not in ("restricted", "enabled"):
            raise _ProfileError(f"{path}.permissions.network", f"unknown network policy {network!r}")
        file_system = _object(permissions.get("file_system"), f"{path}.permissions.file_system")
        fs_kind = _string(file_system.get("type"), f"{path}.permissions.file_system.type")
        if fs_kind == "unrestricted":
            return SandboxProfile(
                kind=kind, file_system_unrestricted=True, network_enabled=network == "enabled", cwd=cwd_path, workspace_roots=roots
            )
        if fs_kind != "restricted":
            raise _ProfileError(f"{path}.permissions.file_system.type", f"unknown file system policy {fs_kind!r}")
        entries_raw = file_system.get("entries")
        if not isinstance(entries_raw, list) or len(entries_raw) > _MAX_ENTRIES:
            raise _ProfileError(f"{path}.permissions.file_system.entries", "expected a list")
        entries = tuple(
            _entry(item, f"{path}.permissions.file_system.entries[{i}]") for i, item in enumerate(entries_raw)
        )
    except _ProfileError as exc:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: {exc}", {"errors": [str(exc)]}) from None
    return SandboxProfile(
        kind=kind, entries=entries, network_enabled=network == "enabled", cwd=cwd_path, workspace_roots=roots
    )
