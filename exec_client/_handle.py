"""``ProcessHandle``: one remote process, driven by its assembler.

Pushed events reach the handle synchronously from the connection's reader (``on_event``);
the assembler answers with newly contiguous chunks and one action. The handle's driver
task (in the client's task group) performs the actions that need I/O: a ``process/read``
and the gap-grace timer. When the record converges the handle tells its host, which owns
the ``process/release`` (the handle never touches the client's bookkeeping).

State table (``ProcessHandle.state``; transitions only through ``_lifecycle.move``):

==========  =============================================  ==============================
state       meaning                                        leaves on
==========  =============================================  ==============================
STARTING    registered; ``process/start`` in flight        answered -> RUNNING; refused
            (events that beat the answer are kept)         or cancelled -> ABANDONED;
                                                           lost session -> COMPLETE
RUNNING     started; the assembler converges the record    record complete -> COMPLETE
COMPLETE    the terminal record is final                   (terminal)
ABANDONED   the start never took effect                    (terminal)
==========  =============================================  ==============================
"""

from __future__ import annotations

import codecs
import collections
import enum
import logging
import os
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final, Protocol

import anyio

import protocol as p

from ._errors import ConnectionLost, ExecClientError, OutputOverrun
from ._lifecycle import Lifecycle

logger: Final = logging.getLogger("exec_client")

# Chunks a streaming handle buffers for its iterator. The connection's reader must never
# block on a slow iterator (it serves every process), so past this the live stream is cut
# with OutputOverrun; the terminal record is unaffected.
STREAM_BUFFER_BYTES: Final = 64 * 1024 * 1024
# Stdin is sent in pieces of at most this size, so a big write never approaches the
# server's message limit (limits.maxMessageBytes, 16 MiB by default, before base64).
WRITE_CHUNK_BYTES: Final = 1024 * 1024
DEFAULT_TERMINATE_GRACE: Final = 2.0

OutputCallback = Callable[[bytes], object]


def _random_id() -> str:
    """A fresh writeId (128 random bits; ``uuid`` would cost the CLI's start-up ~15 ms)."""
    return os.urandom(16).hex()


class HandleState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    ABANDONED = "abandoned"


_TRANSITIONS: Final = {
    HandleState.STARTING: frozenset({HandleState.RUNNING, HandleState.ABANDONED, HandleState.COMPLETE}),
    HandleState.RUNNING: frozenset({HandleState.COMPLETE}),
    HandleState.COMPLETE: frozenset[HandleState](),
    HandleState.ABANDONED: frozenset[HandleState](),
}


class HandleHost(Protocol):
    """What a handle needs from its client: calls on the session, and where its record goes."""

    @property
    def gap_grace(self) -> float: ...

    async def call(self, params: Any, *, retry: bool = False, wait_for_resume: bool = True) -> Any: ...

    def record_complete(self, handle: ProcessHandle, *, release: bool) -> None: ...


class ProcessHandle:
    """A started remote process.

    Iterate it (``async for chunk in handle``) for its output chunks in seq order as they
    arrive (only if started with ``stream_output=True``), or ``async for line in
    handle.lines()``; ``wait()`` for the ``TerminalRecord``. Created by ``Client.start``
    and ``Client.attach``.
    """

    def __init__(
        self,
        host: HandleHost,
        assembler: p.Assembler,
        *,
        stream_output: bool,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> None:
        self._host = host
        self._assembler = assembler
        self.process_id: str = assembler.process_id
        self.argv: tuple[str, ...] = assembler.argv
        self.pid: int | None = None
        self.sandbox_type: str | None = None
        self._lifecycle = Lifecycle(f"process {self.process_id}", HandleState.STARTING, _TRANSITIONS)
        self._action: p.Action = p.Wait()
        self._pending_read: p.NeedRead | None = None
        self._changed = anyio.Event()
        self._done = anyio.Event()
        self._record: p.TerminalRecord | None = None
        self._stream_output = stream_output
        # A tty process's one stream ("pty") is its stdout for callbacks, as in the record.
        self._callbacks = {p.Stream.STDOUT: on_stdout, p.Stream.STDERR: on_stderr, p.Stream.PTY: on_stdout}
        self._chunks: collections.deque[p.OutputChunk] = collections.deque()
        self._chunk_bytes = 0
        self._overrun = False
        self._hole_deadline: float | None = None
        self._hole_at = -1
        # Bumped on every resume: a read answered after it belongs to an abandoned request.
        self._generation = 0

    # --- public API ----------------------------------------------------------------------

    @property
    def state(self) -> HandleState:
        return self._lifecycle.state

    @property
    def record(self) -> p.TerminalRecord | None:
        """The terminal record once assembled, else ``None``."""
        return self._record

    async def wait(self) -> p.TerminalRecord:
        """Wait until the terminal record converged and return it (never raises for the process).

        A record that could not be completed (connection lost for good) has ``failure`` set.
        """
        await self._done.wait()
        assert self._record is not None
        return self._record

    async def write(self, data: bytes | str) -> p.WriteStatus:
        """Write to the process's stdin (started with ``pipe_stdin=True``); a str is UTF-8.

        Retried across a session resume; the server applies a ``writeId`` once. Large
        data is sent in 1 MiB pieces; the status is that of the last piece (or the first
        that was not accepted).
        """
        view = memoryview(data.encode() if isinstance(data, str) else data)
        status = p.WriteStatus.ACCEPTED
        for offset in range(0, max(len(view), 1), WRITE_CHUNK_BYTES):
            piece = bytes(view[offset : offset + WRITE_CHUNK_BYTES])
            params = p.WriteParams(process_id=self.process_id, chunk=piece, write_id=_random_id())
            result: p.WriteResult = await self._host.call(params, retry=True)
            status = result.status
            if status is not p.WriteStatus.ACCEPTED:
                break
        return status

    async def close_stdin(self) -> p.WriteStatus:
        """Close the process's stdin (EOF)."""
        params = p.WriteParams(process_id=self.process_id, eof=True, write_id=_random_id())
        result: p.WriteResult = await self._host.call(params, retry=True)
        return result.status

    async def signal(self, signal: str | p.SignalName) -> bool:
        """Send ``"interrupt"|"terminate"|"kill"|"hangup"`` to the process group; ``delivered``."""
        result: p.SignalResult = await self._host.call(
            p.SignalParams(process_id=self.process_id, signal=p.SignalName(signal))
        )
        return result.delivered

    async def resize(self, rows: int, cols: int) -> None:
        """Set the window size of a ``tty=True`` process's terminal (``process/resize``).

        The server applies it to the pty; the kernel sends SIGWINCH to the terminal's
        foreground process group. Idempotent, so retried across a session resume.

        Raises:
            ValueError: rows or cols outside 1..MAX_TERMINAL_DIMENSION (nothing sent).
            InvalidParams: the process has no terminal (not started with ``tty=True``).
            UnknownProcess: the process is gone.
        """
        params = p.ResizeParams(process_id=self.process_id, rows=rows, cols=cols)
        await self._host.call(params, retry=True)

    async def terminate(self, grace: float = DEFAULT_TERMINATE_GRACE) -> bool:
        """SIGTERM the whole tree, SIGKILL after ``grace`` seconds; ``True`` if it was running."""
        result: p.TerminateResult = await self._host.call(
            p.TerminateParams(process_id=self.process_id, grace_ms=int(grace * 1000)), retry=True
        )
        return result.running

    def __aiter__(self) -> ProcessHandle:
        if not self._stream_output:
            raise RuntimeError("this handle was started with stream_output=False")
        return self

    async def __anext__(self) -> p.OutputChunk:
        while not self._chunks:
            if self._overrun:
                raise OutputOverrun(f"{self.process_id}: the output stream was not consumed fast enough")
            if self._record is not None:
                raise StopAsyncIteration
            await self._changed.wait()
        chunk = self._chunks.popleft()
        self._chunk_bytes -= len(chunk.chunk)
        return chunk

    async def lines(self, stream: str | p.Stream = p.Stream.STDOUT) -> AsyncGenerator[str, None]:
        """The lines of one stream as they arrive (UTF-8, without the newline; the last
        line may lack one). Consumes the chunk iterator: chunks of the other stream are
        skipped. A tty process's ``"pty"`` chunks are its stdout (as in the record); the
        terminal ends their lines in "\\r\\n", and that "\\r" is dropped too."""
        wanted = p.Stream(stream)
        accepted = {wanted, p.Stream.PTY} if wanted is p.Stream.STDOUT else {wanted}
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        async for chunk in self:
            if chunk.stream not in accepted:
                continue
            pending += decoder.decode(chunk.chunk)
            *complete, pending = pending.split("\n")
            for line in complete:
                yield line[:-1] if chunk.stream is p.Stream.PTY and line.endswith("\r") else line
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.process_id} {self.state.value} pid={self.pid} argv={list(self.argv)!r}>"

    # --- inputs from the client ------------------------------------------------------------

    def started(self, *, pid: int | None, sandbox_type: str) -> None:
        """The server started it (``process/start`` answered; a Codex server sends no ``pid``)."""
        self.pid = pid
        self.sandbox_type = sandbox_type
        if self.state is HandleState.STARTING:
            self._lifecycle.move(HandleState.RUNNING)

    def abandoned(self) -> None:
        """The start was refused or cancelled: nothing runs, no record will come."""
        if self.state is HandleState.STARTING:
            self._lifecycle.move(HandleState.ABANDONED)

    def on_event(self, event: p.OutputEvent | p.ExitedEvent | p.ClosedEvent) -> None:
        self._apply(self._assembler.event(event))

    def on_unreadable(self) -> None:
        self._apply(self._assembler.event_unreadable())

    def resumed(self) -> None:
        self._generation += 1
        self._apply(self._assembler.connection_resumed())

    def lost(self, reason: str) -> None:
        self._apply(self._assembler.connection_lost(reason))

    def _apply(self, progress: p.Progress) -> None:
        if self.state is HandleState.ABANDONED:
            return
        for chunk in progress.chunks:
            callback = self._callbacks[chunk.stream]
            if callback is not None:
                try:
                    callback(chunk.chunk)
                except Exception:  # the reader serves every process: never let one break it
                    logger.exception("exec_client: output callback of %s failed", self.process_id)
        if self._stream_output and not self._overrun:
            for chunk in progress.chunks:
                self._chunk_bytes += len(chunk.chunk)
                self._chunks.append(chunk)
            if self._chunk_bytes > STREAM_BUFFER_BYTES:
                self._overrun = True
                self._chunks.clear()
                self._chunk_bytes = 0
        if isinstance(progress.action, p.NeedRead):
            # Latched until the driver takes it: an event routed before the driver runs
            # answers Wait (a read is outstanding) and must not erase the request.
            self._pending_read = progress.action
        elif isinstance(progress.action, p.Complete):
            self._pending_read = None
        self._action = progress.action
        if isinstance(progress.action, p.Complete) and self._record is None:
            self._record = progress.action.record
            self._lifecycle.move(HandleState.COMPLETE)
            # Told now, not when the driver gets to it, so that Client.aclose right
            # after wait() still lets this release land.
            self._host.record_complete(self, release=self._record.failure is None)
            self._done.set()
        self._changed.set()
        self._changed = anyio.Event()

    # --- the driver -------------------------------------------------------------------------

    async def drive(self) -> None:
        """Perform the assembler's actions until the record is complete."""
        try:
            self._apply(self._assembler.begin())
            while self._record is None:
                await self._step()
        except Exception as exc:  # never leave wait() hanging on a client bug
            logger.exception("exec_client: driver of %s failed", self.process_id)
            self.lost(f"client error: {exc!r}")

    async def _step(self) -> None:
        if self._pending_read is not None:
            request, self._pending_read = self._pending_read, None
            await self._read(request)
            return
        action = self._action
        changed = self._changed
        if isinstance(action, p.Wait) and action.hole:
            # One grace per position of the hole: restart only when it moved (progress).
            contiguous = self._assembler.last_contiguous_seq
            if self._hole_deadline is None or contiguous != self._hole_at:
                self._hole_at = contiguous
                self._hole_deadline = anyio.current_time() + self._host.gap_grace
            with anyio.move_on_after(self._hole_deadline - anyio.current_time()):
                await changed.wait()
                return
            self._hole_deadline = None
            self._apply(self._assembler.gap_grace_expired())
            return
        self._hole_deadline = None
        await changed.wait()

    async def _read(self, request: p.NeedRead) -> None:
        params = p.ReadParams(
            process_id=self.process_id, after_seq=request.after_seq, max_bytes=request.max_bytes, wait_ms=request.wait_ms
        )
        generation = self._generation
        try:
            # No waiting for a reconnect here: after a resume the assembler asks afresh.
            result: p.ReadResult = await self._host.call(params, wait_for_resume=False)
        except ConnectionLost:
            # The client resumes the session (then resumed() asks for a new read) or gives
            # up (then lost() finishes the record); either way the assembler hears of it.
            return
        except ExecClientError as exc:  # ServerError (-32001, -32003...) or a malformed result
            if generation == self._generation:
                self._apply(self._assembler.read_failed(f"process/read failed: {exc}"))
            return
        if generation == self._generation:  # else it answers a request a resume abandoned
            self._apply(self._assembler.read_result(result))
