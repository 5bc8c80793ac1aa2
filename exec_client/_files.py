"""The client's file API: ``read_file``, ``write_file``, ``upload``, ``download``, ``list_dir``,
``stat``, ``make_dir`` and ``remove`` over the server's ``fs/*`` methods (Codex's shapes,
docs/protocol.md §13).

Dialect-neutral: it builds Codex-shaped params and sends them through the client's one request
path (``FileHost.call``), so the same code drives our server and Codex's ``codex exec-server``.

Decisions, and why:

- **The sandbox.** Every request carries one, and the server runs the operation inside it
  (the kernel decides, not a path check). The default is ``None`` — ``sandbox: null``, the
  server's default policy, exactly what a command run without ``sandbox=`` gets — so the file
  API can never do more than ``run`` could. On a server with the default ``readOnly`` policy
  reads work and writes fail with ``EROFS``. ``sandbox=`` takes ``run``'s vocabulary (a mode
  name, a ``SandboxPolicy`` or its wire dict), translated into the equivalent permissions
  profile: ``readOnly`` reads everywhere; ``workspaceWrite`` writes its ``writableRoots`` —
  or, when it names none, the directory the operation works in (as a command whose ``cwd``
  is that directory) — minus the ``readOnlySubpaths`` carve-outs (``.git``, ``.codex``,
  ``.agents`` by default); ``none`` asks for no sandbox (the operator must allow it). A dict
  with a ``permissions`` key is taken as a Codex profile and sent as given. Beware: Codex's
  own ``codex exec-server`` runs a ``sandbox: null`` operation unsandboxed (its client
  always sends a profile), so against it pass ``sandbox="readOnly"`` (or a write policy)
  explicitly. Every profile we send carries the context fields Codex 0.169 requires.
- **Downloads stream.** ``fs/open``, then ``fs/readBlock`` of ``DOWNLOAD_BLOCK_BYTES`` at a
  time written to the local file as each arrives, then ``fs/close``: one block in memory,
  whatever the file's size. ``read_file`` reads the same way into memory, up to ``max_bytes``
  (``EFBIG`` beyond: use ``download``); it does not use ``fs/readFile``, whose 64 MiB answer
  would exceed the client's message limit.
- **Uploads go in pieces.** ``fs/writeFile`` has no offset and Codex has no append, so a file
  that fits one piece (at most 4 MiB, less if the server's ``maxMessageBytes`` says so) is
  one ``fs/writeFile``. A larger one is ``fs/writeFile`` of the first piece and then
  ``fs/appendFile`` — our server's extension, sandboxed the same way, which appends only at
  the exact current size so a resent piece is refused, never duplicated. Against a server
  without it (Codex's) a larger upload is refused with ``EFBIG`` before anything is written.
  Like ``cp``, a failed upload can leave a partial file.
- **Trees** (``recursive=True``): an upload walks the local tree (symlinks followed, as
  ``scp -r``; a directory reached twice is refused) and makes each directory with
  ``fs/createDirectory``; a download lists the remote tree with one ``fs/walk`` first (at most
  ``MAX_TREE_ENTRIES`` entries and ``MAX_TREE_DEPTH`` levels, else nothing is copied).
- **Errors** are ``RemoteFileError`` (an ``OSError``) with the errno the server reports:
  ``RemoteFileNotFound`` (``ENOENT``), ``RemotePermissionError`` (``EROFS`` outside the
  writable roots, ``EACCES``, ``EPERM``). Other server errors (``SandboxUnavailable``,
  ``LimitExceeded``...) pass through as they are. A transfer cut by a connection loss fails
  with ``ConnectionLost`` only when the session is lost: after a cut that the client
  resumes, a download opens the file again and reads on from its offset, and an upload
  learns from the remote size whether the piece in flight landed.
"""

from __future__ import annotations

import errno
import os
import re
from stat import S_ISDIR, S_ISREG
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import attrs

import protocol as p
from protocol import _codex as c
from protocol._messages import DEFAULT_READ_ONLY_SUBPATHS

from ._arguments import sandbox_policy
from ._errors import (
    ConnectionLost,
    ExecClientError,
    ProtocolViolation,
    RemoteFileError,
    RemoteFileNotFound,
    RemotePermissionError,
    ServerError,
)

if TYPE_CHECKING:
    from ._info import ServerInfo

# One fs/readBlock. Receiving a block costs the client ~6x its size at the peak (frame,
# text, JSON, base64 decode): 1 MiB keeps a download's peak near 7 MB whatever the file's
# size. Each block is one sandboxed worker on the server (~20 ms), which bounds the rate
# (~20 MB/s here; 4 MiB blocks: ~30 MB/s for ~25 MB of peak).
DOWNLOAD_BLOCK_BYTES: Final = 1024 * 1024
# The largest upload piece (fs/writeFile / fs/appendFile; sending one costs ~9x its size at
# the peak), and the room its JSON needs besides the base64 data.
MAX_UPLOAD_PIECE_BYTES: Final = 4 * 1024 * 1024
_REQUEST_OVERHEAD_BYTES: Final = 64 * 1024
# What we assume of a server that does not say (Codex's): our own default.
_ASSUMED_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
# read_file's default cap on what it holds in memory.
READ_FILE_MAX_BYTES: Final = 64 * 1024 * 1024
APPEND_METHOD: Final = "fs/appendFile"
# A recursive copy's tree: what one fs/walk may answer. Codex's exec-server refuses a walk
# that asks for more than 10 000 directories or 50 000 entries (ours caps at 100 000).
MAX_TREE_ENTRIES: Final = 50_000
MAX_TREE_DIRECTORIES: Final = 10_000
MAX_TREE_DEPTH: Final = 64
# How many connection cuts one transfer rides out (each: the client resumes the session).
MAX_TRANSFER_RESUMES: Final = 8
# fs/close after a transfer (also when it failed or was cancelled) waits at most this long.
CLOSE_TIMEOUT_SECONDS: Final = 5.0

SandboxArgument = p.SandboxPolicy | Mapping[str, Any] | str | None

_OS_ERROR: Final = re.compile(r"\(os error (\d+)\)\s*$")
# A codex exec-server's "not found" (our -32009 maps to it in that dialect).
_CODEX_NOT_FOUND: Final = -32004
_WRITE_REFUSED: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# Our server's refusal of a sandbox whose cwd (here: a writable root) does not exist.
_MISSING_CWD: Final = "cwd is not an existing absolute directory"


class FileHost(Protocol):
    """What the file API needs from the client: its request path and what ``initialize`` said."""

    @property
    def info(self) -> ServerInfo: ...

    #: How many times the session was resumed: a file handle lives on one connection.
    resumes: int

    async def call(
        self, params: Any, method: str | None = None, *, retry: bool = False, wait_for_resume: bool = True, raw: bool = False
    ) -> Any: ...


@attrs.frozen(kw_only=True)
class FileStat:
    """``stat(path)``: a symlink reports its target's type and size, with ``is_symlink``."""

    path: str
    size: int
    is_file: bool
    is_dir: bool
    is_symlink: bool
    modified_at_ms: int


@attrs.frozen(kw_only=True)
class DirEntry:
    """One entry of ``list_dir(path)`` (``is_dir``/``is_file`` follow symlinks)."""

    name: str
    is_dir: bool
    is_file: bool


def remote_path(path: str | os.PathLike[str]) -> str:
    """A remote path as given, checked: absolute (there is no remote working directory).

    Raises:
        ValueError: relative, empty or holding a NUL.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"a remote path must be a str, not {type(text).__name__}")
    if not text.startswith("/") or "\0" in text:
        raise ValueError(f"a remote path must be absolute: {text!r}")
    return text


# Fields Codex's exec-server requires in every sandbox context (0.169 refuses the request
# without them: "missing field `windowsSandboxLevel`"); ours ignores them.
_CODEX_CONTEXT: Final = {"windowsSandboxLevel": "disabled", "useLegacyLandlock": False}


def _special(kind: str, access: str, subpath: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"kind": kind}
    if subpath is not None:
        value["subpath"] = subpath
    return {"path": {"type": "special", "value": value}, "access": access}


def sandbox_profile(sandbox: SandboxArgument, directory: str) -> dict[str, Any] | None:
    """The permissions profile to send for ``sandbox`` (see the module docstring).

    ``directory`` is where the operation works: writable under a ``workspaceWrite`` that
    names no ``writableRoots``.

    Raises:
        ValueError: not a sandbox this client knows how to say.
    """
    if sandbox is None:
        return None
    if isinstance(sandbox, Mapping) and "permissions" in sandbox:
        return dict(sandbox)  # a Codex permissions profile: the server checks it strictly
    policy = sandbox_policy(sandbox)
    assert policy is not None
    if policy.mode is p.SandboxMode.NONE:
        return {"permissions": {"type": "disabled"}, **_CODEX_CONTEXT}
    entries = [_special("root", "read")]
    profile: dict[str, Any] = {}
    if policy.mode is p.SandboxMode.WORKSPACE_WRITE:
        roots = list(policy.writable_roots) or [directory]
        entries.append(_special("project_roots", "write"))
        subpaths = DEFAULT_READ_ONLY_SUBPATHS if policy.read_only_subpaths is None else policy.read_only_subpaths
        entries += [_special("project_roots", "read", subpath) for subpath in subpaths]
        # The profile's cwd must be writable in it (as ours always is): the first root.
        profile = {"cwd": c.uri_from_path(roots[0]), "workspaceRoots": [c.uri_from_path(root) for root in roots]}
    network = "enabled" if policy.network else "restricted"
    file_system = {"type": "restricted", "entries": entries}
    permissions = {"type": "managed", "file_system": file_system, "network": network}
    return {"permissions": permissions, **profile, **_CODEX_CONTEXT}


def _errno_of(error: ServerError) -> int | None:
    """The OS errno a file error carries: ``data.errno`` (a name or a number) or a trailing
    ``(os error N)`` in the message (Codex's form)."""
    value = error.data.get("errno") if isinstance(error.data, dict) else None
    if isinstance(value, str):
        value = getattr(errno, value, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = _OS_ERROR.search(error.message)
    return int(found.group(1)) if found else None


def file_error(error: ServerError, path: str) -> ExecClientError:
    """A server error of a file operation on ``path`` as the exception to raise."""
    number = _errno_of(error)
    if error.code == p.ErrorCode.FILE_NOT_FOUND or (error.code == _CODEX_NOT_FOUND and number is None and "not found" in error.message.lower()):
        number = errno.ENOENT if number is None else number
    elif number is None and error.code not in (p.ErrorCode.FILE_FAILED, p.ErrorCode.INVALID_REQUEST):
        return error  # not about the file: SandboxUnavailable, LimitExceeded, ...
    if number == errno.ENOENT:
        return RemoteFileNotFound(number, error.message, path, error.code)
    if number in _WRITE_REFUSED:
        return RemotePermissionError(number, error.message, path, error.code)
    return RemoteFileError(number, error.message, path, error.code)


def _structure(raw: Any, type_: type, method: str) -> Any:
    try:
        return c.converter.structure(raw, type_)
    except Exception as exc:  # any structuring failure is the server's
        raise ProtocolViolation(f"malformed {method} result: {exc}") from None


def _raise(error: OSError) -> None:
    raise error


def _handle_id() -> str:
    return f"exec-fs-{os.urandom(12).hex()}"


class RemoteFiles:
    """The file operations of one client (its request path; nothing of its own but a cache)."""

    def __init__(self, host: FileHost) -> None:
        self._host = host
        self._can_append: bool | None = None  # learned at the first upload larger than a piece

    # --- reads ----------------------------------------------------------------------------

    async def stat(self, path: str | os.PathLike[str], *, sandbox: SandboxArgument = None) -> FileStat:
        path = remote_path(path)
        raw = await self._call(c.PathParams(path=c.uri_from_path(path), sandbox=self._profile(sandbox, path)), "fs/getMetadata", path, retry=True)
        meta: c.Metadata = _structure(raw, c.Metadata, "fs/getMetadata")
        return FileStat(
            path=path,
            size=meta.size,
            is_file=meta.is_file,
            is_dir=meta.is_directory,
            is_symlink=meta.is_symlink,
            modified_at_ms=meta.modified_at_ms,
        )

    async def list_dir(self, path: str | os.PathLike[str], *, sandbox: SandboxArgument = None) -> tuple[DirEntry, ...]:
        path = remote_path(path)
        params = c.PathParams(path=c.uri_from_path(path), sandbox=self._profile(sandbox, path, directory=path))
        # Not resent after a cut: fs/readDirectory's answer is the one unbounded one, and an
        # answer over the client's message limit ends the connection — resending would loop.
        raw = await self._call(params, "fs/readDirectory", path)
        result: c.ReadDirectoryResult = _structure(raw, c.ReadDirectoryResult, "fs/readDirectory")
        entries = (DirEntry(name=e.file_name, is_dir=e.is_directory, is_file=e.is_file) for e in result.entries)
        return tuple(sorted(entries, key=lambda entry: entry.name))

    async def read_file(
        self, path: str | os.PathLike[str], *, max_bytes: int | None = None, sandbox: SandboxArgument = None
    ) -> bytes:
        path = remote_path(path)
        limit = READ_FILE_MAX_BYTES if max_bytes is None else max_bytes
        data = bytearray()

        async def keep(block: bytes) -> None:
            if len(data) + len(block) > limit:
                raise RemoteFileError(errno.EFBIG, f"File too large: more than max_bytes={limit}; use download()", path)
            data.extend(block)

        await self._read_blocks(path, sandbox, keep)
        return bytes(data)

    async def download(
        self,
        remote: str | os.PathLike[str],
        local: str | os.PathLike[str],
        *,
        recursive: bool = False,
        sandbox: SandboxArgument = None,
    ) -> int:
        remote = remote_path(remote)
        if recursive and (await self.stat(remote, sandbox=sandbox)).is_dir:
            return await self._download_tree(remote, os.fspath(local), sandbox)
        return await self._download_file(remote, local, sandbox)

    async def _download_tree(self, remote: str, local: str, sandbox: SandboxArgument) -> int:
        """A remote tree (symlinks followed, as scp -r does) into ``local``, made if missing."""
        entries = await self._walk(remote, sandbox)
        os.makedirs(local, exist_ok=True)
        total = 0
        for path, kind in entries:  # breadth-first: a directory comes before what it holds
            here = os.path.join(local, os.path.relpath(path, remote))
            if kind == "directory":
                os.makedirs(here, exist_ok=True)
            elif kind in ("file", "symlink"):  # a symlink to a file: its content
                total += await self._download_file(path, here, sandbox)
            else:
                raise RemoteFileError(None, "not a regular file or directory", path)
        return total

    async def _walk(self, root: str, sandbox: SandboxArgument) -> list[tuple[str, str]]:
        """Every path below ``root`` with its kind, all at once (bounded by the server), or raise."""
        options = c.WalkOptions(
            max_depth=MAX_TREE_DEPTH, max_directories=MAX_TREE_DIRECTORIES, max_entries=MAX_TREE_ENTRIES, follow_directory_symlinks=True
        )
        params = c.WalkParams(path=c.uri_from_path(root), options=options, sandbox=self._profile(sandbox, root, directory=root))
        result: c.WalkResult = _structure(await self._call(params, "fs/walk", root, retry=True), c.WalkResult, "fs/walk")
        if result.errors:
            first = result.errors[0]
            raise RemoteFileError(None, first.message, c.path_from_uri(first.path))
        if result.truncated:
            raise RemoteFileError(
                errno.E2BIG, f"more than {MAX_TREE_ENTRIES} entries or {MAX_TREE_DIRECTORIES} directories; nothing copied", root
            )
        entries = [(c.path_from_uri(entry.path), entry.kind) for entry in result.entries]
        for path, kind in entries:
            if not path.startswith(root.rstrip("/") + "/"):
                raise ProtocolViolation(f"fs/walk of {root} answered a path outside it: {path}")
            if kind == "directory" and os.path.relpath(path, root).count("/") + 1 >= MAX_TREE_DEPTH:
                # Its contents were not walked (a symlink loop, or simply too deep): copy nothing.
                raise RemoteFileError(errno.E2BIG, f"deeper than {MAX_TREE_DEPTH} levels; nothing copied", path)
        return entries

    async def _download_file(self, remote: str, local: str | os.PathLike[str], sandbox: SandboxArgument) -> int:
        target: anyio.AsyncFile[bytes] | None = None

        async def open_target() -> None:  # only once the remote file is open
            nonlocal target
            target = await anyio.open_file(local, "wb")

        async def write(block: bytes) -> None:
            assert target is not None
            await target.write(block)

        try:
            return await self._read_blocks(remote, sandbox, write, on_open=open_target)
        finally:
            if target is not None:
                with anyio.CancelScope(shield=True):
                    await target.aclose()

    async def _read_blocks(
        self,
        path: str,
        sandbox: SandboxArgument,
        sink: Callable[[bytes], Awaitable[None]],
        on_open: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Stream ``path`` block by block into ``sink`` (one block in memory); the byte count.

        A handle dies with its connection: after a cut the client resumes the session, and
        the file is opened again and read on from where it was.
        """
        uri = c.uri_from_path(path)
        profile = self._profile(sandbox, path)
        handle_id = _handle_id()
        await self._call(c.OpenParams(handle_id=handle_id, path=uri, sandbox=profile), "fs/open", path, retry=True)
        # The connection the handle lives on (read at once: no resume can come in between).
        opened_on: int | None = self._host.resumes
        offset = 0
        reopened = 0
        try:
            if on_open is not None:
                await on_open()
            while True:
                if opened_on != self._host.resumes:
                    # The handle died with its connection: open the file again on this one
                    # (waits for a resume under way; raises if the session is lost).
                    reopened += 1
                    if reopened > MAX_TRANSFER_RESUMES:
                        raise ConnectionLost(f"{path}: the connection was cut {reopened} times during the transfer")
                    handle_id = _handle_id()
                    await self._call(c.OpenParams(handle_id=handle_id, path=uri, sandbox=profile), "fs/open", path, retry=True)
                    opened_on = self._host.resumes
                params = c.ReadBlockParams(handle_id=handle_id, offset=offset, len=DOWNLOAD_BLOCK_BYTES)
                try:
                    raw = await self._call(params, "fs/readBlock", path)
                except ConnectionLost:
                    opened_on = None  # cut while asking: open again once resumed
                    continue
                except RemoteFileNotFound:
                    if opened_on == self._host.resumes:
                        raise
                    continue  # asked on a newer connection than the handle's: open again
                block: c.ReadBlockResult = _structure(raw, c.ReadBlockResult, "fs/readBlock")
                if len(block.chunk) > DOWNLOAD_BLOCK_BYTES:
                    raise ProtocolViolation(f"fs/readBlock answered {len(block.chunk)} bytes for {DOWNLOAD_BLOCK_BYTES}")
                if block.chunk:
                    await sink(block.chunk)
                offset += len(block.chunk)
                if block.eof or not block.chunk:
                    return offset
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                try:
                    await self._host.call(c.CloseParams(handle_id=handle_id), "fs/close", raw=True, wait_for_resume=False)
                except ExecClientError:
                    pass  # the handle dies with its connection anyway

    # --- writes ---------------------------------------------------------------------------

    async def write_file(
        self, path: str | os.PathLike[str], data: bytes | bytearray | memoryview | str, *, sandbox: SandboxArgument = None
    ) -> None:
        path = remote_path(path)
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes or str, not {type(data).__name__}")
        view = memoryview(data).cast("B")
        piece = self._piece_bytes()
        if len(view) > piece:
            await self._require_append(path, len(view), piece)
        profile = self._profile(sandbox, path)
        await self._write_piece(path, bytes(view[:piece]), 0, profile)
        for offset in range(piece, len(view), piece):
            await self._write_piece(path, bytes(view[offset : offset + piece]), offset, profile)

    async def upload(
        self,
        local: str | os.PathLike[str],
        remote: str | os.PathLike[str],
        *,
        recursive: bool = False,
        sandbox: SandboxArgument = None,
    ) -> int:
        remote = remote_path(remote)
        if recursive and os.path.isdir(local):
            return await self._upload_tree(os.fspath(local), remote, sandbox)
        return await self._upload_file(local, remote, sandbox)

    async def _upload_tree(self, local: str, remote: str, sandbox: SandboxArgument) -> int:
        """A local tree (symlinks followed, as scp -r does; a loop is refused) into ``remote``."""
        total = 0
        seen: set[tuple[int, int]] = set()
        for directory, dirnames, filenames in os.walk(local, followlinks=True, onerror=_raise):
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:
                raise OSError(errno.ELOOP, "directory reached twice (a symbolic link loop?)", directory)
            seen.add((info.st_dev, info.st_ino))
            dirnames.sort()
            relative = os.path.relpath(directory, local)
            there = remote if relative == "." else os.path.join(remote, relative)
            try:
                await self.make_dir(there, sandbox=sandbox)
            except RemoteFileError as exc:
                if exc.errno != errno.EEXIST or not (await self.stat(there, sandbox=sandbox)).is_dir:
                    raise
            for name in sorted(filenames):
                total += await self._upload_file(os.path.join(directory, name), os.path.join(there, name), sandbox)
        return total

    async def _upload_file(self, local: str | os.PathLike[str], remote: str, sandbox: SandboxArgument) -> int:
        info = os.stat(local)  # before open: a FIFO would block the open
        if S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(local))
        if not S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(local))
        piece = self._piece_bytes()
        if info.st_size > piece:
            await self._require_append(remote, info.st_size, piece)
        profile = self._profile(sandbox, remote)
        async with await anyio.open_file(local, "rb") as source:
            offset = 0
            while True:
                data = await source.read(piece)
                if offset and not data:
                    return offset
                if offset:
                    await self._require_append(remote, offset + len(data), piece)  # it grew while we read
                await self._write_piece(remote, data, offset, profile)
                offset += len(data)
                if len(data) < piece:
                    return offset

    async def make_dir(self, path: str | os.PathLike[str], *, parents: bool = False, sandbox: SandboxArgument = None) -> None:
        path = remote_path(path)
        params = c.CreateDirectoryParams(path=c.uri_from_path(path), recursive=parents, sandbox=self._profile(sandbox, path))
        await self._call(params, "fs/createDirectory", path, retry=parents)  # mkdir -p is idempotent

    async def remove(self, path: str | os.PathLike[str], *, recursive: bool = False, sandbox: SandboxArgument = None) -> None:
        path = remote_path(path)
        params = c.RemoveParams(path=c.uri_from_path(path), recursive=recursive, force=False, sandbox=self._profile(sandbox, path))
        await self._call(params, "fs/remove", path)

    async def _write_piece(self, path: str, data: bytes, offset: int, profile: Any) -> None:
        import base64

        encoded = base64.b64encode(data).decode("ascii")
        uri = c.uri_from_path(path)
        if offset == 0:
            # Truncate-and-write is idempotent: safe to resend after a resume.
            await self._call(c.WriteFileParams(path=uri, data_base64=encoded, sandbox=profile), "fs/writeFile", path, retry=True)
            return
        params = c.AppendFileParams(path=uri, data_base64=encoded, offset=offset, sandbox=profile)
        for _attempt in range(MAX_TRANSFER_RESUMES):
            try:
                await self._call(params, APPEND_METHOD, path)
                return
            except ConnectionLost:
                # Did the piece land before the cut? The size says (stat waits for the resume).
                size = (await self.stat(path)).size
                if size == offset + len(data):
                    return
                if size != offset:
                    raise RemoteFileError(errno.EIO, f"changed during the upload: {size} bytes, expected {offset}", path) from None
        await self._call(params, APPEND_METHOD, path)

    async def _require_append(self, path: str, size: int, piece: int) -> None:
        """Refuse, before anything is written, an upload the server cannot take in pieces."""
        if self._can_append is None:
            # A probe with no effect: offset -1 is invalid params (-32602) on a server that has
            # the method, before any file is touched, and -32601 on one that does not.
            probe = c.AppendFileParams(path=c.uri_from_path(path), data_base64="", offset=-1)
            try:
                await self._host.call(probe, APPEND_METHOD, raw=True, retry=True)
                self._can_append = True
            except ServerError as exc:
                self._can_append = exc.code != p.ErrorCode.METHOD_NOT_FOUND
        if not self._can_append:
            raise RemoteFileError(
                errno.EFBIG,
                f"{size} bytes is more than one fs/writeFile ({piece} bytes) and the server has no {APPEND_METHOD}",
                path,
            )

    # --- plumbing -------------------------------------------------------------------------

    def _piece_bytes(self) -> int:
        limit = self._host.info.limits.get("maxMessageBytes")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            limit = _ASSUMED_MAX_MESSAGE_BYTES
        return max(1, min(MAX_UPLOAD_PIECE_BYTES, (limit - _REQUEST_OVERHEAD_BYTES) * 3 // 4))

    def _profile(self, sandbox: SandboxArgument, path: str, *, directory: str | None = None) -> dict[str, Any] | None:
        return sandbox_profile(sandbox, directory or os.path.dirname(path.rstrip("/")) or "/")

    async def _call(self, params: Any, method: str, path: str, *, retry: bool = False) -> Any:
        try:
            return await self._host.call(params, method, raw=True, retry=retry)
        except ServerError as exc:
            if exc.code == p.ErrorCode.SANDBOX_UNAVAILABLE and _MISSING_CWD in exc.message:
                # The profile's cwd is the writable root: the directory the path is in, which
                # does not exist. What a local write there would say.
                raise RemoteFileNotFound(errno.ENOENT, f"No such file or directory ({exc.message})", path, exc.code) from None
            raise file_error(exc, path) from None
