"""File operations (``fs/*``), each done inside the sandbox its request names.

The server does not check paths against the policy: it starts a short-lived worker
(``_fs_worker.py``, standard library only) through the same launch plan a command under
that policy would get (``Sandbox.prepare``), so the kernel enforces the operation exactly
as it would enforce a command's — a write outside the writable roots fails with the same
errno. ``sandbox: null`` is the server's default policy, as for ``process/start``. A worker
costs one fork and a Python start-up (~20 ms); that is the price of not having a second,
weaker copy of the policy in the server.

Used by the Codex dialect (``_codex.py``); the method and field names are Codex's, and our
own clients may call them the same way (docs/protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from protocol import ErrorCode, ProtocolError, SandboxMode
from protocol import _codex as c

from ._codex_sandbox import policy_for
from .sandbox import SandboxUnavailable

if TYPE_CHECKING:
    from .sandbox import Sandbox


class FileHost(Protocol):
    """What file operations need from the server: its sandbox and its default cwd."""

    @property
    def sandbox(self) -> Sandbox: ...

    @property
    def default_cwd(self) -> str: ...

# Its source is passed with -c: the package may live where the sandbox's uid cannot read.
WORKER_SOURCE: Final = Path(__file__).with_name("_fs_worker.py").read_text()
# A worker that takes longer than this is killed and the request fails (-32603).
WORKER_TIMEOUT_SECONDS: Final = 60.0
# Bounds on what one request may make the server hold.
MAX_READ_FILE_BYTES: Final = 64 * 1024 * 1024
MAX_READ_BLOCK_BYTES: Final = 8 * 1024 * 1024
MAX_WRITE_FILE_BYTES: Final = 64 * 1024 * 1024
MAX_OPEN_HANDLES: Final = 256
MAX_HANDLE_ID_LENGTH: Final = 128
MAX_WALK_ENTRIES: Final = 100_000
# Workers one connection may run at once; further fs/* requests wait for one to finish.
MAX_CONCURRENT_WORKERS: Final = 4
# The worker's stdout is JSON of at most a file's base64 plus a little framing.
_MAX_WORKER_OUTPUT: Final = MAX_READ_FILE_BYTES * 4 // 3 + 1024 * 1024
_WORKER_ENV: Final = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}


@attrs.frozen
class _Handle:
    path: str
    sandbox: Any


def _usable_by_anyone(path: str) -> bool:
    """Whether any uid may execute ``path``: every directory above it searchable by others,
    the file readable and executable by others."""
    try:
        if os.stat(path).st_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
            return False
        parent = os.path.dirname(os.path.abspath(path))
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


@functools.cache
def worker_python(*, root: bool) -> str:
    """The interpreter for the worker. A root server's sandboxed commands run as another uid
    (the workspace owner or ``nobody``), which often cannot reach the server's own Python (a
    pyenv or venv under ``/root``): then the system's ``python3`` is used.

    Raises:
        SandboxUnavailable: no interpreter that uid can run.
    """
    if not root:
        return sys.executable
    candidates = [sys.executable, os.path.realpath(sys.executable), shutil.which("python3", path=os.defpath)]
    for candidate in candidates:
        if candidate and _usable_by_anyone(candidate) and _usable_by_anyone(os.path.realpath(candidate)):
            return candidate
    raise SandboxUnavailable("no Python interpreter that the sandbox's unprivileged uid can execute (install python3 in /usr/bin)")


def _error(answer: dict[str, Any]) -> ProtocolError:
    """The worker's error as ours: missing path, a refused request, or the OS's refusal."""
    kind, message = answer["kind"], answer["message"]
    if kind == "notFound":
        return ProtocolError(ErrorCode.FILE_NOT_FOUND, message)
    if kind == "refused":
        return ProtocolError(ErrorCode.INVALID_REQUEST, message)
    number = answer.get("errno")
    data = {"errno": errno.errorcode.get(number, str(number))} if isinstance(number, int) else None
    return ProtocolError(ErrorCode.FILE_FAILED, message, data)


def _check_data(method: str, data_base64: str) -> None:
    if len(data_base64) > MAX_WRITE_FILE_BYTES * 4 // 3 + 4:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"limit exceeded: {method} over {MAX_WRITE_FILE_BYTES} bytes")
    try:
        base64.b64decode(data_base64, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "invalid params: invalid base64 @ $.params.dataBase64") from None


def _path(uri: str, field: str = "path") -> str:
    try:
        return c.path_from_uri(uri, field)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: {exc} @ $.params.{field}") from None


class FileOperations:
    """The ``fs/*`` methods of one connection (its open handles die with it)."""

    def __init__(self, server: FileHost, *, max_mode: SandboxMode | None = None) -> None:
        self._server = server
        self._max_mode = max_mode  # the token's own sandbox ceiling
        self._handles: dict[str, _Handle] = {}
        self._workers = trio.Semaphore(MAX_CONCURRENT_WORKERS)

    async def dispatch(self, method: str, params: Any) -> Any:
        match method:
            case "fs/readFile":
                return await self._run(params.sandbox, "readFile", _path(params.path), limit=MAX_READ_FILE_BYTES)
            case "fs/writeFile":
                _check_data(method, params.data_base64)
                return await self._run(params.sandbox, "writeFile", _path(params.path), data=params.data_base64)
            case "fs/appendFile":
                # Our extension: an upload larger than one message, in pieces, each in the
                # request's sandbox like fs/writeFile. The file must exist and be exactly
                # ``offset`` bytes long, so a resent piece is refused, never written twice.
                _check_data(method, params.data_base64)
                if params.offset < 0:
                    raise ProtocolError(ErrorCode.INVALID_PARAMS, "invalid params: offset must be >= 0 @ $.params.offset")
                return await self._run(params.sandbox, "appendFile", _path(params.path), data=params.data_base64, offset=params.offset)
            case "fs/createDirectory":
                return await self._run(params.sandbox, "createDirectory", _path(params.path), recursive=bool(params.recursive))
            case "fs/getMetadata":
                return await self._run(params.sandbox, "getMetadata", _path(params.path))
            case "fs/canonicalize":
                result = await self._run(params.sandbox, "canonicalize", _path(params.path))
                return {"path": c.uri_from_path(result["path"])}
            case "fs/readDirectory":
                return await self._run(params.sandbox, "readDirectory", _path(params.path))
            case "fs/walk":
                options = params.options
                result = await self._run(
                    params.sandbox,
                    "walk",
                    _path(params.path),
                    maxDepth=max(0, options.max_depth),
                    maxDirectories=max(0, min(options.max_directories, MAX_WALK_ENTRIES)),
                    maxEntries=max(0, min(options.max_entries, MAX_WALK_ENTRIES)),
                    follow=options.follow_directory_symlinks,
                )
                for item in (*result["entries"], *result["errors"]):
                    item["path"] = c.uri_from_path(item["path"])
                return result
            case "fs/remove":
                return await self._run(
                    params.sandbox, "remove", _path(params.path), recursive=bool(params.recursive), force=bool(params.force)
                )
            case "fs/copy":
                return await self._run(
                    params.sandbox,
                    "copy",
                    _path(params.source_path, "sourcePath"),
                    destination=_path(params.destination_path, "destinationPath"),
                    recursive=params.recursive,
                )
            case "fs/open":
                return await self._open(params)
            case "fs/readBlock":
                handle = self._handle(params.handle_id)
                if not 0 <= params.len <= MAX_READ_BLOCK_BYTES or params.offset < 0:
                    raise ProtocolError(
                        ErrorCode.INVALID_PARAMS, f"invalid params: len must be 0..{MAX_READ_BLOCK_BYTES} and offset >= 0 @ $.params"
                    )
                return await self._run(handle.sandbox, "readBlock", handle.path, offset=params.offset, len=params.len)
            case "fs/close":
                self._handle(params.handle_id)
                del self._handles[params.handle_id]
                return {}
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method}")

    async def _open(self, params: c.OpenParams) -> dict[str, str]:
        handle_id = params.handle_id
        if not handle_id or len(handle_id) > MAX_HANDLE_ID_LENGTH:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: handleId must be 1-{MAX_HANDLE_ID_LENGTH} characters @ $.params.handleId")
        if handle_id in self._handles:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"file handle `{handle_id}` is already open")
        if len(self._handles) >= MAX_OPEN_HANDLES:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"limit exceeded: at most {MAX_OPEN_HANDLES} open file handles")
        path = _path(params.path)
        await self._run(params.sandbox, "open", path)  # readable in its sandbox, and a file
        self._handles[handle_id] = _Handle(path, params.sandbox)
        return {"handleId": handle_id}

    def _handle(self, handle_id: str) -> _Handle:
        handle = self._handles.get(handle_id)
        if handle is None:
            raise ProtocolError(ErrorCode.FILE_NOT_FOUND, f"unknown file handle `{handle_id[:MAX_HANDLE_ID_LENGTH]}`")
        return handle

    async def _run(self, sandbox: Any, op: str, path: str, **arguments: Any) -> Any:
        """Run one operation in the worker under the request's sandbox; its result, or raise."""
        server = self._server
        profile = c.parse_sandbox(sandbox)
        cwd = (profile.cwd if profile is not None else None) or server.default_cwd
        request = json.dumps({"op": op, "path": path, **arguments}).encode()
        async with self._workers:
            try:
                policy = server.sandbox.resolve(policy_for(profile, cwd=cwd), max_mode=self._max_mode)
                python = worker_python(root=os.geteuid() == 0)
                plan = server.sandbox.prepare(policy, [python, "-I", "-S", "-c", WORKER_SOURCE], cwd, dict(_WORKER_ENV))
            except SandboxUnavailable as exc:
                raise ProtocolError(ErrorCode.SANDBOX_UNAVAILABLE, f"sandbox unavailable: {exc}") from None
            try:
                with trio.fail_after(WORKER_TIMEOUT_SECONDS):
                    returncode, stdout, stderr = await _run_worker(plan.argv, request, cwd, plan.env, plan.pass_fds)
            except trio.TooSlowError:
                raise ProtocolError(ErrorCode.FILE_FAILED, f"{op} took longer than {WORKER_TIMEOUT_SECONDS:.0f}s") from None
            finally:
                plan.cleanup()
        try:
            answer = json.loads(stdout)
        except ValueError:
            detail = stderr.decode("utf-8", "replace").strip().splitlines()
            raise ProtocolError(
                ErrorCode.FILE_FAILED, f"{op} failed in its sandbox (exit {returncode}): {detail[-1] if detail else 'no output'}"
            ) from None
        if "error" in answer:
            raise _error(answer["error"])
        return answer["ok"]


async def _run_worker(
    argv: list[str], request: bytes, cwd: str, env: dict[str, str], pass_fds: tuple[int, ...]
) -> tuple[int, bytes, bytes]:
    """Run the worker to completion with ``request`` on stdin; bounded output, always reaped."""
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        pass_fds=pass_fds,
        start_new_session=True,
    )
    stdout = bytearray()
    stderr = bytearray()

    async def feed() -> None:
        assert process.stdin is not None
        async with process.stdin:
            try:
                await process.stdin.send_all(request)
            except trio.BrokenResourceError:
                pass

    async def collect(stream: trio.abc.ReceiveStream | None, into: bytearray, limit: int) -> None:
        assert stream is not None
        async with stream:
            while data := await stream.receive_some(1 << 20):
                if len(into) + len(data) > limit:
                    process.kill()
                    return
                into += data

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            nursery.start_soon(collect, process.stdout, stdout, _MAX_WORKER_OUTPUT)
            nursery.start_soon(collect, process.stderr, stderr, 64 * 1024)
            await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
    returncode = process.returncode
    assert returncode is not None
    return returncode, bytes(stdout), bytes(stderr)
