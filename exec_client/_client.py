"""``Client`` and ``open_client``: a session with an exec server, on asyncio or trio, and auto-resume.

Written once on anyio, so the same class serves ``asyncio.run`` programs and trio ones
(the sync facade in ``_sync.py`` drives it from a private event-loop thread). The client
owns a task group holding the connection's reader and keepalive, one driver task per
in-flight process, the releases, and (after a connection loss) the resume task. When the
connection drops, the client reconnects with backoff within the session's detached TTL,
sends ``initialize{resumeSessionId}``, and tells every in-flight assembler to catch up
with a read from its last contiguous seq. If it cannot, or the server shut down (1001),
every in-flight record ends with ``failure`` set.

State table (``Client.state``; transitions only through ``_lifecycle.move``):

==========  ==========================================  ==================================
state       meaning                                     leaves on
==========  ==========================================  ==================================
CONNECTING  ``open_client`` is connecting               initialized -> CONNECTED;
                                                        failed -> CLOSED
CONNECTED   a live connection carries the session       dropped -> RESUMING; 1001/4001 or
                                                        resume off -> LOST; aclose -> CLOSED
RESUMING    reconnecting within the session TTL         resumed -> CONNECTED; refused or
                                                        TTL spent -> LOST; aclose -> CLOSED
LOST        the session is over; records have failure   aclose -> CLOSED
CLOSED      closed by us                                (terminal)
==========  ==========================================  ==================================
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anyio
import anyio.abc

import protocol as p

from ._arguments import (
    Command,
    StdinSource,
    TerminalSizeArg,
    check_failed,
    check_stdin,
    command_argv,
    new_process_id,
    sandbox_policy,
    terminal_size,
)
from ._connection import PING_INTERVAL_SECONDS, PING_TIMEOUT_SECONDS, CloseInfo, Connection
from ._core import Backoff, GiveUp, after_close
from ._dialect import CODEX_NAME, NATIVE_NAME, dialect_for
from ._errors import (
    CommandFailed,
    ConnectionFailed,
    ConnectionLost,
    DuplicateProcess,
    ExecClientError,
    InitializeRefused,
    NotSupported,
    ProtocolViolation,
    PtyUnsupported,
    ServerError,
    UnknownProcess,
)
from ._handle import OutputCallback, ProcessHandle
from ._info import ListedProcess, ServerInfo
from ._lifecycle import Lifecycle
from ._transport import CommandTarget, Target, TransportClosed, open_transport, parse_target

if TYPE_CHECKING:
    from protocol import _codex as codex

    from ._files import DirEntry, FileStat, RemoteFiles

# The file methods' ``sandbox``: as ``run``'s, or a Codex permissions profile (exec_client._files).
FileSandbox: TypeAlias = "p.SandboxPolicy | Mapping[str, Any] | str | None"

logger: Final = logging.getLogger("exec_client")

DEFAULT_URL: Final = "ws://127.0.0.1:8765"
CLIENT_VERSION: Final = "0.2.0"
# A hole in a process's seqs waits this long for a late (reordered) event before a read.
GAP_GRACE_SECONDS: Final = 0.05
CONNECT_TIMEOUT_SECONDS: Final = 10.0
# Resume backoff: quick first retries (a blip), capped so we still try often within the TTL.
RESUME_FIRST_DELAY: Final = 0.05
RESUME_MAX_DELAY: Final = 1.0
# Each resume attempt is short, so a server that accepts TCP and then says nothing
# cannot eat the whole TTL in one attempt.
RESUME_ATTEMPT_SECONDS: Final = 1.5
# A retried request (idempotent calls across a resume) backs off between tries.
RETRY_FIRST_DELAY: Final = 0.01
RETRY_MAX_DELAY: Final = 0.5
TERMINATE_ON_CANCEL_SECONDS: Final = 5.0
RELEASE_TIMEOUT_SECONDS: Final = 10.0
RELEASE_DRAIN_SECONDS: Final = 1.0
# Reads of a file object given as stdin, in a worker thread.
STDIN_FILE_READ_BYTES: Final = 256 * 1024

class ClientState(enum.Enum):
    """Where the client's session stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RESUMING = "resuming"  # the connection dropped; reconnecting within the session TTL
    LOST = "lost"  # the session could not be resumed; in-flight records have ``failure``
    CLOSED = "closed"  # closed by us


_S = ClientState
_TRANSITIONS: Final = {
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.CLOSED}),
    _S.CONNECTED: frozenset({_S.RESUMING, _S.LOST, _S.CLOSED}),
    _S.RESUMING: frozenset({_S.CONNECTED, _S.LOST, _S.CLOSED}),
    _S.LOST: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset[ClientState](),
}


class Client:
    """A session with an exec server. Create it with ``open_client`` (or ``connect``, sync)."""

    def __init__(
        self,
        task_group: anyio.abc.TaskGroup,
        target: Target,
        token: str | None,
        *,
        delivery: p.Delivery,
        client_name: str,
        connect_timeout: float,
        gap_grace: float,
        resume: bool,
        binary_output: bool,
        ca_file: str | None,
        ping_interval: float | None,
        ping_timeout: float,
        on_resume: Callable[[str], object] | None,
        dialect: str | None = None,
    ) -> None:
        self.url = target.url
        self._forced_dialect = dialect
        self._gap_grace = gap_grace
        self._task_group = task_group
        self._target = target
        self._token = token
        self._delivery = delivery
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        # A spawned server's session lives and dies with that process: nothing to resume.
        self._resume = resume and not isinstance(target, CommandTarget)
        self._binary_output = binary_output
        self._ca_file = ca_file
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._on_resume = on_resume
        self._connection: Connection | None = None
        self._info: ServerInfo | None = None
        self._handles: dict[str, ProcessHandle] = {}
        self._failure: str | None = None
        self._state_changed = anyio.Event()
        self._lifecycle = Lifecycle("client", ClientState.CONNECTING, _TRANSITIONS, self._wake)
        self.resumes = 0  # how many times the session was resumed (for diagnostics)
        self._releases_pending = 0
        self._releases_idle = anyio.Event()
        self._releases_idle.set()
        self._remote_files: RemoteFiles | None = None  # made by the first file operation

    # --- public API ----------------------------------------------------------------------

    @property
    def info(self) -> ServerInfo:
        """The server's ``initialize`` answer (the latest one after a resume)."""
        assert self._info is not None
        return self._info

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def gap_grace(self) -> float:
        """Seconds a hole in a process's seqs waits for a reordered event before a read.

        At least the dialect's floor: Codex's server reorders events (its pipes and the
        exit race each other) but never drops one while attached, so a hole there waits
        longer than on ours before it costs a read.
        """
        connection = self._connection
        floor = connection.dialect.min_gap_grace if connection is not None else 0.0
        return max(self._gap_grace, floor)

    @property
    def dialect(self) -> str:
        """The server's dialect: ``"exec-server"`` (ours) or ``"codex"`` (docs/protocol.md §13.3)."""
        return self.info.dialect

    @property
    def state(self) -> ClientState:
        return self._lifecycle.state

    async def wait_lost(self) -> None:
        """Return once the session is over: it could not be resumed (``LOST``) or we closed it."""
        while self.state not in (ClientState.LOST, ClientState.CLOSED):
            await self._state_changed.wait()

    async def run(
        self,
        command: Command,
        *,
        shell: bool | None = None,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        stdin: StdinSource | None = None,
        timeout: float | None = None,
        sandbox: p.SandboxPolicy | Mapping[str, Any] | str | None = None,
        max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        tty: bool = False,
        size: TerminalSizeArg | None = None,
    ) -> p.TerminalRecord:
        """Run a command to completion and return its terminal record.

        Args:
            command: a list is executed directly; a str runs through ``sh -c``.
            shell: ``True`` runs a list through ``sh -c`` too; ``False`` refuses a str.
            check: raise ``CommandFailed`` on a non-zero exit, a timeout, a sandbox denial
                or a failure.
            cwd: working directory on the server host (a relative one is resolved there).
            env: environment variables (added to the server's unless ``inherit_env=False``).
            stdin: bytes, str (UTF-8), a file object or an async iterable, then EOF.
            timeout: seconds after which the server kills the whole tree (``timedOut``).
            sandbox: a ``SandboxPolicy``, its wire dict, a mode name, or ``None`` (server default).
            max_output_bytes: per-stream cap of kept output; beyond it head + tail are kept.
            on_stdout, on_stderr: called with each chunk as it arrives, in order.
            tty: run it on a new pseudo-terminal (its controlling terminal, in its own
                session; stdin, stdout and stderr are the pty). Its output is one stream,
                ``"pty"``: chunks carry ``Stream.PTY``, ``on_stdout`` gets them, and the
                record keeps them as ``stdout`` (``stderr`` stays empty). The terminal is
                always writable (``pipe_stdin`` is implied); ``close_stdin`` sends the
                terminal's EOF (Ctrl-D) rather than closing anything.
            size: the terminal's window size, ``(rows, cols)`` (default: the server's, 24x80).

        Returns:
            The ``TerminalRecord``; a record with ``failure`` set if the session was lost.

        Raises:
            PtyUnsupported: ``tty=True`` and the server has no pseudo-terminals (nothing ran).
            ServerError: the server refused the start (``SpawnFailed``, ``SandboxUnavailable``...).
            ConnectionLost: the session was already lost.
            CommandFailed: with ``check=True``, as above.
            TypeError, ValueError: invalid arguments (nothing was started).

        If cancelled before the record is complete, the process tree is terminated.
        """
        handle = await self.start(
            command,
            shell=shell,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            stdin=stdin,
            timeout=timeout,
            sandbox=sandbox,
            max_output_bytes=max_output_bytes,
            stream_output=False,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            tty=tty,
            size=size,
        )
        try:
            record = await handle.wait()
        except BaseException:
            if handle.record is None:
                await self._terminate_quietly(handle.process_id)
            raise
        if check and check_failed(record):
            raise CommandFailed(record)
        return record

    async def start(
        self,
        command: Command,
        *,
        shell: bool | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        stdin: StdinSource | None = None,
        pipe_stdin: bool = False,
        timeout: float | None = None,
        sandbox: p.SandboxPolicy | Mapping[str, Any] | str | None = None,
        max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES,
        stream_output: bool = True,
        process_id: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        tty: bool = False,
        size: TerminalSizeArg | None = None,
    ) -> ProcessHandle:
        """Start a command and return its ``ProcessHandle`` at once.

        Args as for ``run``, plus:
            pipe_stdin: keep stdin open for ``handle.write``/``handle.close_stdin``.
            stream_output: buffer chunks for ``async for chunk in handle``.
            process_id: choose the processId (default: a fresh unique one).
            (``tty``/``size``: see ``run``; ``handle.resize`` changes the size later.)

        Raises:
            PtyUnsupported: ``tty=True`` and the server has no pseudo-terminals (nothing ran).
            ServerError: the server refused the start.
            ConnectionLost: the session is lost.
            TypeError, ValueError: invalid arguments (nothing was started).
        """
        check_stdin(stdin)
        if stdin is not None and not pipe_stdin and self._connection is not None:
            if not self._connection.dialect.can_close_stdin:
                raise NotSupported(
                    "the server speaks Codex's exec-server dialect, which cannot close a command's stdin: "
                    "pass pipe_stdin=True to keep it open (and terminate the command when done)"
                )
        argv = command_argv(command, shell)
        window = terminal_size(tty, size)
        if tty and not self._usable_info().pty:
            raise PtyUnsupported(
                f"the server at {self.url} has no pseudo-terminals (capabilities.pty is false): cannot start with tty=True"
            )
        process_id = process_id or new_process_id()
        params = p.StartParams(
            process_id=process_id,
            argv=argv,
            cwd=os.fspath(cwd) if cwd is not None else None,
            env=dict(env) if env is not None else None,
            inherit_env=inherit_env,
            pipe_stdin=pipe_stdin or stdin is not None or tty,
            timeout_ms=math.ceil(timeout * 1000) if timeout is not None else None,
            sandbox=sandbox_policy(sandbox),
            tty=tty,
            size=window,
        )
        handle = self._new_handle(process_id, argv, stream_output, max_output_bytes, on_stdout, on_stderr)
        try:
            result = await self._start(params)
        except BaseException as exc:
            self._forget(handle)
            handle.abandoned()
            if not isinstance(exc, ExecClientError):
                # Cancelled (or interrupted) with the start on the wire: it may be running.
                await self._terminate_quietly(process_id)
            raise
        handle.started(pid=result.pid if isinstance(result, p.StartResult) else None, sandbox_type=result.sandbox_type)
        self._task_group.start_soon(handle.drive)
        if stdin is not None:
            try:
                await self._feed_stdin(handle, stdin, keep_open=pipe_stdin)
            except BaseException:
                if handle.record is None:
                    await self._terminate_quietly(process_id)
                raise
        return handle

    async def attach(self, process_id: str, *, stream_output: bool = True) -> ProcessHandle:
        """A handle on a process of this session that another client started (after a resume).

        Its record is caught up with a read from the first seq, then follows the pushes.

        Raises:
            UnknownProcess: the session has no such process.
        """
        for listed in await self.list():
            if listed.process_id == process_id:
                break
        else:
            raise UnknownProcess(p.ErrorCode.UNKNOWN_PROCESS, f"unknown process {process_id!r} in this session")
        handle = self._new_handle(process_id, listed.argv, stream_output, p.DEFAULT_MAX_OUTPUT_BYTES, None, None)
        handle.started(pid=listed.pid, sandbox_type="unknown")
        self._task_group.start_soon(self._drive_attached, handle)
        return handle

    async def list_processes(self) -> tuple[p.ProcessInfo, ...]:
        """The session's processes (``process/list``)."""
        result: p.ListResult = await self.call(p.EmptyParams(), "process/list", retry=True)
        return result.processes

    async def list(self) -> tuple[ListedProcess, ...]:
        """The session's processes, each with the session it belongs to."""
        session_id = self.session_id
        return tuple(
            ListedProcess(
                process_id=info.process_id,
                pid=info.pid,
                argv=info.argv,
                state=info.state,
                next_seq=info.next_seq,
                session_id=session_id,
            )
            for info in await self.list_processes()
        )

    async def aclose(self) -> None:
        """Close the connection; in-flight records end with ``failure`` set. Idempotent."""
        if self.state is ClientState.CLOSED:
            return
        # Let releases already on the wire land, so the server frees those records now.
        with anyio.move_on_after(RELEASE_DRAIN_SECONDS, shield=True):
            await self._releases_idle.wait()
        self._lifecycle.move(ClientState.CLOSED)
        for handle in list(self._handles.values()):
            handle.lost("client closed")
        if self._connection is not None:
            await self._connection.aclose()
        self._task_group.cancel_scope.cancel()

    async def detach(self) -> None:
        """Drop the connection without a closing handshake and close the client.

        The server then keeps the session detached for its TTL, as after a cut, so that
        another client can resume it (``open_client(session_id=...)``) and ``attach``.
        """
        if self.state is ClientState.CLOSED:
            return
        self._lifecycle.move(ClientState.CLOSED)
        for handle in list(self._handles.values()):
            handle.lost("client detached")
        if self._connection is not None:
            await self._connection.abort("detached by the client")
        self._task_group.cancel_scope.cancel()

    # --- files (exec_client/_files.py: the fs/* methods, run inside a sandbox) ---------------

    def _file_api(self) -> RemoteFiles:
        from ._files import RemoteFiles  # imported on first use: the CLI's start-up stays small

        if self._remote_files is None:
            self._remote_files = RemoteFiles(self)
        return self._remote_files

    async def read_file(self, path: str | os.PathLike[str], *, max_bytes: int | None = None, sandbox: FileSandbox = None) -> bytes:
        """The whole remote file, read in blocks; at most ``max_bytes`` (default 64 MiB).

        ``sandbox`` (every file method): as ``run``'s; ``None`` is the server's default policy.
        See ``exec_client._files`` for what each mode allows.

        Raises:
            RemoteFileNotFound, RemotePermissionError, RemoteFileError: with the server's errno
                (``EFBIG`` over ``max_bytes``).
        """
        return await self._file_api().read_file(path, max_bytes=max_bytes, sandbox=sandbox)

    async def write_file(self, path: str | os.PathLike[str], data: bytes | bytearray | memoryview | str, *, sandbox: FileSandbox = None) -> None:
        """Create or truncate the remote file and write ``data`` (a str as UTF-8).

        Raises:
            RemotePermissionError: outside the sandbox's writable roots (``EROFS``) or refused.
            RemoteFileNotFound, RemoteFileError: as the server reports them.
        """
        await self._file_api().write_file(path, data, sandbox=sandbox)

    async def upload(
        self, local_path: str | os.PathLike[str], remote_path: str | os.PathLike[str], *, recursive: bool = False, sandbox: FileSandbox = None
    ) -> int:
        """Copy a local file to the server in bounded pieces; returns the bytes sent.

        ``recursive``: a local directory becomes the remote directory ``remote_path`` (made if
        missing, merged if not), symlinks followed as scp -r does.

        Raises:
            OSError: the local file cannot be read (or is not a regular file).
            RemoteFileError: as ``write_file`` (``EFBIG``: too large for a server without
                ``fs/appendFile``, refused before anything was written).
        """
        return await self._file_api().upload(local_path, remote_path, recursive=recursive, sandbox=sandbox)

    async def download(
        self, remote_path: str | os.PathLike[str], local_path: str | os.PathLike[str], *, recursive: bool = False, sandbox: FileSandbox = None
    ) -> int:
        """Copy a remote file to ``local_path`` block by block (never whole in memory); the bytes received.

        ``recursive``: a remote directory becomes the local directory ``local_path`` (one
        ``fs/walk`` lists it first, at most 100 000 entries and 64 levels, else nothing is copied).

        Raises:
            RemoteFileNotFound, RemoteFileError: the remote file cannot be read (the local
                file is not created then).
            OSError: the local file cannot be written.
        """
        return await self._file_api().download(remote_path, local_path, recursive=recursive, sandbox=sandbox)

    async def list_dir(self, path: str | os.PathLike[str], *, sandbox: FileSandbox = None) -> tuple[DirEntry, ...]:
        """The entries of a remote directory, sorted by name."""
        return await self._file_api().list_dir(path, sandbox=sandbox)

    async def stat(self, path: str | os.PathLike[str], *, sandbox: FileSandbox = None) -> FileStat:
        """Size, type and modification time of a remote path (a symlink: its target's)."""
        return await self._file_api().stat(path, sandbox=sandbox)

    async def make_dir(self, path: str | os.PathLike[str], *, parents: bool = False, sandbox: FileSandbox = None) -> None:
        """Create a remote directory (``parents``: with its missing parents, and no error if it exists)."""
        await self._file_api().make_dir(path, parents=parents, sandbox=sandbox)

    async def remove(self, path: str | os.PathLike[str], *, recursive: bool = False, sandbox: FileSandbox = None) -> None:
        """Remove a file, an empty directory, or (``recursive``) a whole tree."""
        await self._file_api().remove(path, recursive=recursive, sandbox=sandbox)

    # --- what handles call (HandleHost) ------------------------------------------------------

    async def call(
        self, params: Any, method: str | None = None, *, retry: bool = False, wait_for_resume: bool = True, raw: bool = False
    ) -> Any:
        """One request on the current connection.

        ``retry``: resend after a resume if the connection dropped (idempotent calls only),
        after a short bounded backoff. ``wait_for_resume``: while resuming, wait for it
        (else raise ``ConnectionLost``). ``raw``: answer the result as JSON data, undecoded
        (the file API decodes its own).
        """
        backoff = Backoff(RETRY_FIRST_DELAY, RETRY_MAX_DELAY)
        while True:
            connection = await self._usable_connection(wait=wait_for_resume)
            try:
                return await connection.request(params, method, raw=raw)
            except ConnectionLost:
                if not retry:
                    raise
            await anyio.sleep(backoff.next())

    def record_complete(self, handle: ProcessHandle, *, release: bool) -> None:
        """A handle's record converged: forget it, and free it on the server."""
        self._forget(handle)
        if release and self._info is not None and self._info.release and self.state is not ClientState.CLOSED:
            self._releases_pending += 1
            self._releases_idle = anyio.Event()
            self._task_group.start_soon(self._release, handle.process_id)

    # --- requests ----------------------------------------------------------------------

    def _usable_info(self) -> ServerInfo:
        """``info``, or the one error of a session that is over (as ``_new_handle`` raises)."""
        if self.state is ClientState.LOST:
            raise ConnectionLost(self._failure or "session lost")
        if self.state is ClientState.CLOSED or self._info is None:
            raise ConnectionLost("client closed")
        return self._info

    def _new_handle(
        self,
        process_id: str,
        argv: tuple[str, ...],
        stream_output: bool,
        max_output_bytes: int | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> ProcessHandle:
        if self.state is ClientState.LOST:
            raise ConnectionLost(self._failure or "session lost")
        if self.state is ClientState.CLOSED:
            raise ConnectionLost("client closed")
        if process_id in self._handles:
            # Its handle would replace the running one's, which would then never complete.
            raise DuplicateProcess(p.ErrorCode.DUPLICATE_PROCESS, f"process {process_id!r} is already running in this session")
        assembler = p.Assembler(
            process_id,
            argv,
            push_events=self.info.push_events,
            in_order=self.info.in_order,
            max_output_bytes=max_output_bytes,
        )
        handle = ProcessHandle(self, assembler, stream_output=stream_output, on_stdout=on_stdout, on_stderr=on_stderr)
        # Registered before the request: the first events follow the start response at once.
        self._handles[process_id] = handle
        return handle

    async def _drive_attached(self, handle: ProcessHandle) -> None:
        handle.resumed()  # nothing seen yet: catch up from seq 0
        await handle.drive()

    async def _start(self, params: p.StartParams) -> p.StartResult | codex.StartResult:
        resent = False
        backoff = Backoff(RETRY_FIRST_DELAY, RETRY_MAX_DELAY)
        while True:
            connection = await self._usable_connection(wait=True)
            try:
                result: p.StartResult | codex.StartResult = await connection.request(params)
                return result
            except ConnectionLost:
                # The start may or may not have reached the server: send it again on the
                # resumed session; "duplicate" then means it did.
                resent = True
            except DuplicateProcess:
                if not resent:
                    raise
                if not connection.dialect.can_list:
                    # No process/list to ask (Codex): "duplicate" after a resend means it runs.
                    from protocol import _codex as codex

                    return codex.StartResult(process_id=params.process_id, sandbox_type="unknown")
                for info in await self.list_processes():
                    if info.process_id == params.process_id:
                        return p.StartResult(process_id=info.process_id, pid=info.pid, sandbox_type="unknown")
                raise
            await anyio.sleep(backoff.next())

    async def _feed_stdin(self, handle: ProcessHandle, stdin: Any, *, keep_open: bool) -> None:
        if isinstance(stdin, bytes | bytearray | memoryview | str):
            data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
            if data:
                await handle.write(data)
            if not keep_open:
                await handle.close_stdin()
            return
        # A stream may be endless (interactive): feed it in the background.
        self._task_group.start_soon(self._pump_stdin, handle, stdin, keep_open)

    async def _pump_stdin(self, handle: ProcessHandle, source: Any, keep_open: bool) -> None:
        try:
            if hasattr(source, "__aiter__"):
                async for piece in source:
                    if await handle.write(piece) is not p.WriteStatus.ACCEPTED:
                        return
            else:
                while True:
                    piece = await anyio.to_thread.run_sync(source.read, STDIN_FILE_READ_BYTES, abandon_on_cancel=True)
                    if not piece:
                        break
                    if await handle.write(piece) is not p.WriteStatus.ACCEPTED:
                        return
            if not keep_open:
                await handle.close_stdin()
        except (ExecClientError, OSError) as exc:
            logger.warning("exec_client: stdin of %s: %s", handle.process_id, exc)

    async def _terminate_quietly(self, process_id: str) -> None:
        with anyio.move_on_after(TERMINATE_ON_CANCEL_SECONDS, shield=True):
            try:
                await self.call(p.TerminateParams(process_id=process_id, grace_ms=0), wait_for_resume=False)
            except ExecClientError:
                pass

    async def _release(self, process_id: str) -> None:
        try:
            with anyio.move_on_after(RELEASE_TIMEOUT_SECONDS):
                await self.call(p.ReleaseParams(process_id=process_id), retry=True)
        except ExecClientError:
            pass  # best effort: the server expires the record anyway
        finally:
            self._releases_pending -= 1
            if not self._releases_pending:
                self._releases_idle.set()

    async def _usable_connection(self, *, wait: bool) -> Connection:
        while True:
            state = self.state
            if state is ClientState.LOST:
                raise ConnectionLost(self._failure or "session lost")
            if state is ClientState.CLOSED:
                raise ConnectionLost("client closed")
            connection = self._connection
            if state is ClientState.CONNECTED and connection is not None and not connection.is_closed:
                return connection
            if not wait:
                raise ConnectionLost("connection lost; resuming the session")
            await self._state_changed.wait()

    def _wake(self, old: ClientState, new: ClientState) -> None:
        self._state_changed.set()
        self._state_changed = anyio.Event()

    # --- connection lifecycle ---------------------------------------------------------------

    async def _connect(self, resume_session_id: str | None = None) -> tuple[Connection, ServerInfo]:
        transport = await open_transport(
            self._target,
            self._token,
            ca_file=self._ca_file,
            timeout=self._connect_timeout,
            max_message_bytes=MAX_MESSAGE_BYTES,
        )
        connection = await Connection.open(
            self._task_group,
            transport,
            self.url,
            on_notification=self._on_notification,
            on_closed=self._on_closed,
            on_unreadable=self._on_unreadable,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
        )
        # A resume speaks the dialect the session was opened in (its errors are that dialect's).
        forced = self._forced_dialect or (self._info.dialect if resume_session_id and self._info else None)
        try:
            with anyio.fail_after(self._connect_timeout):
                if forced == CODEX_NAME:
                    from ._codex_dialect import CodexDialect

                    connection.use_dialect(CodexDialect(None))  # Codex's own initialize, too
                raw = await connection.request(
                    p.InitializeParams(
                        client_name=self._client_name,
                        client_version=CLIENT_VERSION,
                        protocol_version=p.PROTOCOL_VERSION,
                        resume_session_id=resume_session_id,
                        delivery=self._delivery,
                        binary_output=self._binary_output and connection.supports_binary,
                    ),
                    raw=True,
                )
                dialect, info = dialect_for(raw, forced=forced, resume_session_id=resume_session_id)
                connection.use_dialect(dialect)
                await connection.notify(p.InitializedParams())
        except ServerError as exc:
            await connection.aclose()
            if forced == CODEX_NAME:
                from protocol._codex import CodexErrorCode

                if exc.code == CodexErrorCode.SESSION_ALREADY_ATTACHED:
                    # Codex has not yet seen the old connection go: worth another attempt.
                    raise ConnectionFailed(f"initialize failed at {self.url}: {exc}") from None
            # Reachable and answering: its refusal is final (e.g. an unknown session).
            raise InitializeRefused(f"initialize failed at {self.url}: {exc}") from None
        except (ProtocolViolation, ConnectionLost, TimeoutError) as exc:
            await connection.aclose()
            detail = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            raise ConnectionFailed(f"initialize failed at {self.url}: {detail}") from None
        except BaseException:
            await connection.aclose()
            raise
        return connection, info

    async def _open(self, session_id: str | None) -> None:
        try:
            self._connection, self._info = await self._connect(resume_session_id=session_id)
        except BaseException:
            self._lifecycle.move(ClientState.CLOSED)
            raise
        if session_id is not None and not self._info.resumed:
            await self._connection.aclose()
            self._lifecycle.move(ClientState.CLOSED)
            raise InitializeRefused(f"the server at {self.url} no longer has session {session_id}")
        self._lifecycle.move(ClientState.CONNECTED)

    def _on_notification(self, notification: p.Notification) -> None:
        event = notification.params
        if isinstance(event, p.OutputEvent | p.ExitedEvent | p.ClosedEvent):
            handle = self._handles.get(event.process_id)
            if handle is not None:
                handle.on_event(event)

    def _on_unreadable(self, process_id: str) -> None:
        handle = self._handles.get(process_id)
        if handle is not None:
            handle.on_unreadable()

    def _on_closed(self, connection: Connection, info: CloseInfo) -> None:
        if connection is not self._connection or info.by_us or self.state is not ClientState.CONNECTED:
            return
        ttl_ms = self._info.detached_session_ttl_ms if self._info is not None else None
        decision = after_close(info.code, info.reason, resume=self._resume, ttl_ms=ttl_ms)
        if isinstance(decision, GiveUp):
            self._give_up(decision.reason)
            return
        self._lifecycle.move(ClientState.RESUMING)
        self._notify_resume(f"connection to {self.url} lost ({info.reason}); resuming the session")
        self._task_group.start_soon(self._resume_session, info, decision.seconds)

    def _notify_resume(self, message: str) -> None:
        logger.info("exec_client: %s", message)
        if self._on_resume is not None:
            try:
                self._on_resume(message)
            except Exception:
                logger.exception("exec_client: on_resume callback failed")

    async def _resume_session(self, lost: CloseInfo, seconds: float) -> None:
        deadline = anyio.current_time() + seconds
        backoff = Backoff(RESUME_FIRST_DELAY, RESUME_MAX_DELAY)
        last_error = lost.reason
        session_id = self.info.session_id
        while self.state is ClientState.RESUMING:
            try:
                attempt = min(RESUME_ATTEMPT_SECONDS, max(0.0, deadline - anyio.current_time()))
                with anyio.fail_after(attempt):
                    connection, info = await self._connect(resume_session_id=session_id)
            except InitializeRefused as exc:
                self._give_up(f"connection lost ({lost.reason}); the server refused the resume: {exc}")
                return
            except (ConnectionFailed, TimeoutError, TransportClosed) as exc:
                if isinstance(exc, ConnectionFailed):
                    last_error = str(exc)
            else:
                if not info.resumed:
                    await connection.aclose()
                    self._give_up(f"connection lost ({lost.reason}); the server no longer has the session")
                    return
                if self.state is not ClientState.RESUMING:
                    await connection.aclose()
                    return
                if not connection.is_closed:
                    self._connection, self._info = connection, info
                    self.resumes += 1
                    self._lifecycle.move(ClientState.CONNECTED)
                    self._notify_resume(f"session {session_id} resumed on a new connection")
                    for handle in list(self._handles.values()):
                        handle.resumed()
                    return
                # It dropped again before we adopted it: back off and try again.
                last_error = connection.close_info.reason if connection.close_info else "connection closed"
            delay = backoff.next()
            if anyio.current_time() + delay >= deadline:
                break
            await anyio.sleep(delay)
        self._give_up(f"connection lost ({lost.reason}); could not resume within {seconds:g} s: {last_error}")

    def _give_up(self, reason: str) -> None:
        if self.state in (ClientState.CONNECTED, ClientState.RESUMING):
            self._failure = reason
            self._lifecycle.move(ClientState.LOST)
        for handle in list(self._handles.values()):
            handle.lost(reason)

    def _forget(self, handle: ProcessHandle) -> None:
        if self._handles.get(handle.process_id) is handle:
            del self._handles[handle.process_id]


# Reads are capped at 4 MiB of payload (READ_MAX_BYTES), i.e. ~5.4 MiB after base64 and
# JSON; 64 MiB leaves room for servers with larger limits without being unbounded.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024


def _dialect_name(dialect: str | None) -> str | None:
    if dialect is None or dialect == "auto":
        return None
    if dialect not in (NATIVE_NAME, CODEX_NAME):
        raise ValueError(f"dialect must be 'auto', {NATIVE_NAME!r} or {CODEX_NAME!r}, not {dialect!r}")
    return dialect


@asynccontextmanager
async def open_client(
    url: str | None = None,
    *,
    token: str | None = None,
    command: Sequence[str] | None = None,
    ssh_options: Sequence[str] = (),
    ca_file: str | None = None,
    delivery: p.Delivery | str = p.Delivery.LOSSLESS,
    client_name: str = "exec-client",
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    gap_grace: float = GAP_GRACE_SECONDS,
    resume: bool = True,
    auto_resume: bool | None = None,
    binary_output: bool = True,
    ping_interval: float | None = PING_INTERVAL_SECONDS,
    ping_timeout: float = PING_TIMEOUT_SECONDS,
    on_resume: Callable[[str], object] | None = None,
    session_id: str | None = None,
    dialect: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to an exec server and open a session (on asyncio or trio).

    Args:
        url: ``ws://host:port``, ``wss://host:port``, ``unix:/path`` or
            ``ssh://[user@]host[:port]`` (runs ``command``, default ``exec-server serve
            --listen stdio``, through ``ssh``). Default ``ws://127.0.0.1:8765``, or none
            when ``command`` is given.
        token: the bearer token (WebSocket targets; a spawned server needs none).
        command: spawn this server locally and speak to it on its stdin/stdout (with no
            ``url``), or the remote command for ``ssh://``.
        ssh_options: extra ``ssh`` arguments (``-i KEY``, ``-o ...``).
        ca_file: trust only this CA bundle for ``wss://`` (default: the system CAs).
        delivery: ``"lossless"`` (default: a command that outpaces this client is slowed
            down rather than having its output evicted) or ``"bestEffort"`` (output
            events may be dropped and are repaired from retention; see protocol doc §8).
        client_name: reported at ``initialize``.
        connect_timeout: seconds for the connect, the handshake and ``initialize``.
        gap_grace: seconds a hole in a process's seqs may wait for a reordered event
            (at least 1 s against Codex's server, which reorders but never drops).
        resume: reconnect and resume the session after a connection loss
            (``auto_resume`` is the old name).
        binary_output: ask for output events as binary frames (no base64).
        ping_interval, ping_timeout: keepalive; a missing pong counts as a cut (``None``: off).
        on_resume: called with a one-line message when the client starts resuming and
            when it resumed (also logged on the ``exec_client`` logger).
        session_id: resume this session (e.g. to ``attach`` to its processes).
        dialect: ``None`` (default) detects the server's dialect from its ``initialize``
            answer: with ``protocolVersion`` ours, without it the Codex exec-server's
            (``codex exec-server``; docs/protocol.md §13.3), which the client then speaks:
            same API and records, minus what Codex cannot do (a timeout, resource limits,
            closing stdin, ``list``/``attach``: ``NotSupported``). ``"codex"`` speaks Codex's
            dialect from the first message; ``"exec-server"`` never switches.

    Raises:
        ConnectionFailed: unreachable, refused, or a bad token.
        InitializeRefused: the server no longer has ``session_id``.
    """
    if auto_resume is not None:
        resume = auto_resume
    target = parse_target(url if url is not None or command else DEFAULT_URL, command=command, ssh_options=ssh_options)
    body_error: BaseException | None = None
    async with anyio.create_task_group() as task_group:
        client = Client(
            task_group,
            target,
            token,
            delivery=p.Delivery(delivery),
            client_name=client_name,
            connect_timeout=connect_timeout,
            gap_grace=gap_grace,
            resume=resume,
            binary_output=binary_output,
            ca_file=ca_file,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            on_resume=on_resume,
            dialect=_dialect_name(dialect),
        )
        try:
            await client._open(session_id)
        except BaseException as exc:
            body_error = exc
            task_group.cancel_scope.cancel()
        else:
            try:
                yield client
            except BaseException as exc:
                # Re-raised below, outside the task group, so callers see the exception
                # itself rather than an ExceptionGroup (our tasks never raise).
                body_error = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await client.aclose()
    if body_error is not None:
        raise body_error
