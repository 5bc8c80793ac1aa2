"""The sync client: ``connect(url, ...)`` → ``with ... as client: client.run([...])``.

A thin facade over the async ``Client``: the session runs on a private event loop in its
own thread (an anyio blocking portal, asyncio by default), and every method hands its call
to that loop and waits. Any number of threads may call one client at once — including
the worker threads of a running asyncio program, whose own loop is never touched. An
interrupt (``KeyboardInterrupt``) in the waiting thread cancels the call on the loop, which
terminates the remote process as a cancelled ``run`` does, before the interrupt goes on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio.from_thread

import protocol as p

from ._arguments import Command, StdinSource, TerminalSizeArg
from ._client import Client, ClientState, FileSandbox, open_client
from ._handle import HandleState, OutputCallback, ProcessHandle
from ._info import ListedProcess, ServerInfo

if TYPE_CHECKING:
    from ._files import DirEntry, FileStat

T = TypeVar("T")

# How long an interrupted call may take to clean up (terminate its remote process).
INTERRUPT_CLEANUP_SECONDS: Final = 10.0
DEFAULT_BACKEND: Final = "asyncio"


class _Loop:
    """The portal and the one way to run a coroutine function on it from any thread."""

    def __init__(self, backend: str) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
        self.portal = self._portal_cm.__enter__()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        finished = threading.Event()

        async def guarded() -> T:
            try:
                return await fn(*args, **kwargs)
            finally:
                finished.set()

        future = self.portal.start_task_soon(guarded)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                future.cancel()  # cancels the task on the loop: a run terminates its process
                finished.wait(INTERRUPT_CLEANUP_SECONDS)
            raise

    def close(self) -> None:
        self._portal_cm.__exit__(None, None, None)


async def _next(iterator: Any) -> tuple[bool, Any]:
    try:
        return True, await iterator.__anext__()
    except StopAsyncIteration:
        return False, None


class SyncProcessHandle:
    """A started remote process (the sync twin of ``ProcessHandle``).

    Iterate it for output chunks (``stream_output=True``), or ``handle.lines()``; ``wait()``
    for the ``TerminalRecord``.
    """

    def __init__(self, loop: _Loop, handle: ProcessHandle) -> None:
        self._loop = loop
        self._handle = handle
        self.process_id = handle.process_id
        self.argv = handle.argv

    @property
    def pid(self) -> int | None:
        return self._handle.pid

    @property
    def state(self) -> HandleState:
        return self._handle.state

    @property
    def record(self) -> p.TerminalRecord | None:
        return self._handle.record

    def wait(self) -> p.TerminalRecord:
        """Wait for the terminal record (``failure`` set if it could not be completed)."""
        return self._loop.call(self._handle.wait)

    def write(self, data: bytes | str) -> p.WriteStatus:
        return self._loop.call(self._handle.write, data)

    def close_stdin(self) -> p.WriteStatus:
        return self._loop.call(self._handle.close_stdin)

    def signal(self, signal: str | p.SignalName) -> bool:
        return self._loop.call(self._handle.signal, signal)

    def terminate(self, grace: float = 2.0) -> bool:
        return self._loop.call(self._handle.terminate, grace)

    def resize(self, rows: int, cols: int) -> None:
        """``ProcessHandle.resize``: the window size of a ``tty=True`` process's terminal."""
        self._loop.call(self._handle.resize, rows, cols)

    def __iter__(self) -> Iterator[p.OutputChunk]:
        iterator = self._handle.__aiter__()
        while True:
            more, chunk = self._loop.call(_next, iterator)
            if not more:
                return
            yield chunk

    def lines(self, stream: str | p.Stream = p.Stream.STDOUT) -> Iterator[str]:
        """The lines of one stream as they arrive (see ``ProcessHandle.lines``)."""
        iterator = self._handle.lines(stream)
        try:
            while True:
                more, line = self._loop.call(_next, iterator)
                if not more:
                    return
                yield line
        finally:
            self._loop.call(iterator.aclose)

    def __repr__(self) -> str:
        return repr(self._handle).replace("<ProcessHandle", "<SyncProcessHandle", 1)


class SyncClient(AbstractContextManager["SyncClient"]):
    """A session with an exec server for sync code. Create it with ``connect``.

    Same methods, arguments, records and errors as the async ``Client``, without ``await``.
    """

    def __init__(self, loop: _Loop, context: AbstractContextManager[Client]) -> None:
        self._loop = loop
        self._context = context
        self._client = context.__enter__()
        self._closed = False

    @property
    def info(self) -> ServerInfo:
        return self._client.info

    @property
    def session_id(self) -> str:
        return self._client.session_id

    @property
    def state(self) -> ClientState:
        return self._client.state

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def resumes(self) -> int:
        return self._client.resumes

    def run(
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
        """``Client.run`` (same arguments): run to completion; Ctrl-C terminates the remote process."""
        return self._loop.call(
            self._client.run,
            command,
            shell=shell,
            check=check,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            stdin=stdin,
            timeout=timeout,
            sandbox=sandbox,
            max_output_bytes=max_output_bytes,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            tty=tty,
            size=size,
        )

    def start(
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
    ) -> SyncProcessHandle:
        """``Client.start`` (same arguments): start and return a handle at once."""
        handle = self._loop.call(
            self._client.start,
            command,
            shell=shell,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            stdin=stdin,
            pipe_stdin=pipe_stdin,
            timeout=timeout,
            sandbox=sandbox,
            max_output_bytes=max_output_bytes,
            stream_output=stream_output,
            process_id=process_id,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            tty=tty,
            size=size,
        )
        return SyncProcessHandle(self._loop, handle)

    def attach(self, process_id: str, *, stream_output: bool = True) -> SyncProcessHandle:
        return SyncProcessHandle(self._loop, self._loop.call(self._client.attach, process_id, stream_output=stream_output))

    def list(self) -> tuple[ListedProcess, ...]:
        return self._loop.call(self._client.list)

    def list_processes(self) -> tuple[p.ProcessInfo, ...]:
        return self._loop.call(self._client.list_processes)

    # --- files: ``Client.read_file`` and friends, same arguments --------------------------

    def read_file(self, path: str | os.PathLike[str], *, max_bytes: int | None = None, sandbox: FileSandbox = None) -> bytes:
        return self._loop.call(self._client.read_file, path, max_bytes=max_bytes, sandbox=sandbox)

    def write_file(self, path: str | os.PathLike[str], data: bytes | bytearray | memoryview | str, *, sandbox: FileSandbox = None) -> None:
        self._loop.call(self._client.write_file, path, data, sandbox=sandbox)

    def upload(
        self, local_path: str | os.PathLike[str], remote_path: str | os.PathLike[str], *, recursive: bool = False, sandbox: FileSandbox = None
    ) -> int:
        return self._loop.call(self._client.upload, local_path, remote_path, recursive=recursive, sandbox=sandbox)

    def download(
        self, remote_path: str | os.PathLike[str], local_path: str | os.PathLike[str], *, recursive: bool = False, sandbox: FileSandbox = None
    ) -> int:
        return self._loop.call(self._client.download, remote_path, local_path, recursive=recursive, sandbox=sandbox)

    def make_dir(self, path: str | os.PathLike[str], *, parents: bool = False, sandbox: FileSandbox = None) -> None:
        self._loop.call(self._client.make_dir, path, parents=parents, sandbox=sandbox)

    def list_dir(self, path: str | os.PathLike[str], *, sandbox: FileSandbox = None) -> tuple[DirEntry, ...]:
        return self._loop.call(self._client.list_dir, path, sandbox=sandbox)

    def stat(self, path: str | os.PathLike[str], *, sandbox: FileSandbox = None) -> FileStat:
        return self._loop.call(self._client.stat, path, sandbox=sandbox)

    def remove(self, path: str | os.PathLike[str], *, recursive: bool = False, sandbox: FileSandbox = None) -> None:
        self._loop.call(self._client.remove, path, recursive=recursive, sandbox=sandbox)

    def detach(self) -> None:
        """``Client.detach``: leave the session detached on the server, then close."""
        if not self._closed:
            self._loop.call(self._client.detach)
        self.close()

    def close(self) -> None:
        """Close the session and stop its event-loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._context.__exit__(None, None, None)
        finally:
            self._loop.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(url: str | None = None, *, backend: str = DEFAULT_BACKEND, **kwargs: Any) -> SyncClient:
    """Connect to an exec server for sync code; arguments as for ``open_client``.

    ``backend``: the private event loop's kind, ``"asyncio"`` (default) or ``"trio"``.

    Raises:
        ConnectionFailed: unreachable, refused, or a bad token.
    """
    loop = _Loop(backend)
    try:
        context = loop.portal.wrap_async_context_manager(open_client(url, **kwargs))
        return SyncClient(loop, context)
    except BaseException:
        loop.close()
        raise
