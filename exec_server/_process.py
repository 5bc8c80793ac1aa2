"""One running command: its pipes (or its terminal), its sequenced events, its exit and its retained output.

Events of a process share one seq counter (output, exited, closed). A seq is assigned in
the same synchronous step that hands the event to the session, so the order of seqs is
the order of delivery on every connection.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import resource
import signal as signal_module
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import attrs
import trio

from protocol import (
    ClosedEvent,
    ExitedEvent,
    OutputEvent,
    ProcessEvent,
    ProcessState,
    ReadResult,
    Stream,
    TerminalSize,
    Usage,
)

from . import _observe, _tree
from ._lifecycle import Lifecycle
from ._pty import Terminal
from ._retention import RetainedOutput
from ._spawn import SpawnedProcess
from .sandbox import NO_CLEANUP, DenialReport, LaunchPlan, Sandbox

log = logging.getLogger(__name__)

READ_CHUNK_BYTES: Final = 256 * 1024
# What the denial heuristic may look at: the end of each stream.
TAIL_BYTES: Final = 4096
# Retried writeIds remembered per process: as many as one connection can have in flight
# (a resumed client retries those), each at most MAX_WRITE_ID_LENGTH characters, so one
# process's store stays under 64 KiB whatever its client sends.
MAX_WRITE_IDS: Final = 256
# How long a cancelled process may take to die after SIGKILL before we stop waiting.
REAP_AFTER_KILL_SECONDS: Final = 5.0
# How long the reap waits for a terminal's master that has not arrived yet (the launcher
# sends it before the exec, so at the reap it is there or never comes).
TERMINAL_SETTLE_SECONDS: Final = 5.0


class _Lifecycle(enum.Enum):
    """A process's states; every move goes through ``ManagedProcess._move`` (``_ALLOWED``).

    ========  ======================================  ====================================
    state     meaning                                 leaves on
    ========  ======================================  ====================================
    RUNNING   forked; pipes pumped                    reaped -> EXITED (``exited`` is sent)
    EXITED    reaped; a descendant may hold a pipe    every source at EOF -> CLOSED
              (or the terminal's slave)               (a terminal's: EIO, no slave holder)
    CLOSED    ``closed`` sent; the record is final    (terminal)
    ========  ======================================  ====================================
    """

    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


_ALLOWED: Final = {
    (_Lifecycle.RUNNING, _Lifecycle.EXITED),
    (_Lifecycle.EXITED, _Lifecycle.CLOSED),
}

Deliver = Callable[[ProcessEvent], Awaitable[None]]


@attrs.define(eq=False)
class _Source:
    """One fd the process's output comes from: a pipe, or a terminal's master.

    A ``tty: true`` process has two, both labelled ``pty``: the launcher's diagnostics pipe
    (only a setup failure writes to it) and the master, whose fd is None until the launcher
    has sent it.
    """

    stream: Stream
    fd: int | None
    eof: bool = False


class ManagedProcess:
    """A spawned command, from fork to ``closed``.

    Args:
        process_id: the client's id for it.
        argv: the command as requested (not the launcher's argv).
        spawned: the forked process and its pipe fds.
        plan: the sandbox launch plan it was started with.
        sandbox: asked for the denial report when the process exits.
        retention: where its output is retained for ``process/read``.
        deliver: hands an event to the session's current connection (may wait in
            lossless mode; that wait is the backpressure on the pipes).
        timeout: seconds until the whole tree is killed, or None.
        marker: the tree marker in its environment (see ``_tree``).
        retain_after_close: seconds its terminal record is kept after ``closed``.
    """

    def __init__(
        self,
        *,
        process_id: str,
        argv: tuple[str, ...],
        spawned: SpawnedProcess,
        plan: LaunchPlan,
        sandbox: Sandbox,
        retention: RetainedOutput,
        deliver: Deliver,
        timeout: float | None,
        marker: str,
        retain_after_close: float,
    ) -> None:
        self.process_id = process_id
        self.argv = argv
        self.pid = spawned.popen.pid
        self._popen = spawned.popen
        self._spawned = spawned
        self._plan = plan
        self._sandbox = sandbox
        self.retention = retention
        self._deliver = deliver
        self._timeout = timeout
        self._marker = marker
        self.retain_after_close = retain_after_close
        self._started = time.monotonic()
        self._lifecycle = Lifecycle(f"process {process_id}", _Lifecycle.RUNNING, _ALLOWED)
        self._last_seq = 0
        self._changed = trio.Event()
        self._tails = {Stream.STDOUT: bytearray(), Stream.STDERR: bytearray(), Stream.PTY: bytearray()}
        self._terminal_channel = spawned.terminal
        self.terminal: Terminal | None = None
        # Set once the master arrived or never will (the launcher ended without it).
        self._terminal_settled = trio.Event()
        self._pending_size: TerminalSize | None = None
        if spawned.terminal is None:
            assert spawned.stdout_fd is not None
            self._sources = [_Source(Stream.STDOUT, spawned.stdout_fd), _Source(Stream.STDERR, spawned.stderr_fd)]
        else:
            self._sources = [_Source(Stream.PTY, spawned.stderr_fd), _Source(Stream.PTY, None)]
        self._pipes_eof = trio.Event()
        self._stdin_fd = spawned.stdin_fd
        self._stdin_lock = trio.Lock()
        self._write_ids: dict[str, bool] = {}
        self.exited: ExitedEvent | None = None
        self.timed_out = False
        self.closed_event = trio.Event()

    # --- state -----------------------------------------------------------------------

    def _move(self, new: _Lifecycle) -> None:
        self._lifecycle.move(new)

    @property
    def state(self) -> ProcessState:
        return ProcessState(self._lifecycle.state.value)

    @property
    def is_tty(self) -> bool:
        return self._terminal_channel is not None

    @property
    def is_closed(self) -> bool:
        return self._lifecycle.state is _Lifecycle.CLOSED

    @property
    def next_seq(self) -> int:
        return self._last_seq + 1

    def _next_seq(self) -> int:
        self._last_seq += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return self._last_seq

    # --- running -----------------------------------------------------------------------

    async def run(self, *, on_closed: Callable[[], None] = lambda: None) -> None:
        """Pump the pipes, reap the process, push ``exited`` then ``closed``.

        ``on_closed`` runs as the process turns closed, before ``closed`` is queued: what it
        records (metrics, the close log line) is there by the time a client sees the event.
        """
        try:
            async with trio.open_nursery() as nursery:
                for source in self._sources:
                    if source.fd is not None:
                        nursery.start_soon(self._pump, source)
                if self._terminal_channel is not None:
                    nursery.start_soon(self._open_terminal, nursery)
                if self._timeout is not None:
                    nursery.start_soon(self._enforce_timeout, self._timeout)
                await self._reap()
                # The pumps end at EOF of both pipes; a grandchild may hold them open. Most
                # often the reap already drained both to EOF: then `closed` follows `exited`
                # in the same step (one write burst for the client, no extra scheduling pass).
                if not self._pipes_eof.is_set():
                    await self._pipes_eof.wait()
                self._move(_Lifecycle.CLOSED)
                on_closed()
                await self._emit(ClosedEvent(process_id=self.process_id, seq=self._next_seq()))
                nursery.cancel_scope.cancel()
        finally:
            await self._kill_and_reap()
            # Closed (or cancelled): nothing of the tree outlives it. A descendant that left
            # the group and scrubbed its environment still lives in the command's PID
            # namespace, whose init (marked, re-parented to us) takes it down when killed.
            self.signal_tree(signal_module.SIGKILL)
            self._close_stdin()
            for source in self._sources:
                if source.fd is not None and (self.terminal is None or source.fd != self.terminal.fd):
                    _close_quietly(source.fd)
            if self.terminal is not None:
                self.terminal.close()
            if self._terminal_channel is not None:
                self._terminal_channel.close()
                self._terminal_settled.set()  # a write waiting for the master gives up
            if self._plan.cleanup is not NO_CLEANUP:
                # Off the event loop: a command can leave 100k files in its temp dir.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._plan.cleanup)
            self.closed_event.set()

    async def _open_terminal(self, nursery: trio.Nursery) -> None:
        """Wait for the launcher's master, then pump it like a pipe."""
        assert self._terminal_channel is not None
        source = self._sources[1]
        try:
            master = await self._terminal_channel.receive()
        except OSError:
            log.exception("process %s: no terminal from the launcher", self.process_id)
            master = None
        if master is None:
            self._mark_eof(source)
        else:
            self.terminal = Terminal(master)
            source.fd = master
            if self._pending_size is not None:
                self._resize_now(self._pending_size)
            nursery.start_soon(self._pump, source)
        self._terminal_settled.set()

    async def _pump(self, source: _Source) -> None:
        fd = source.fd
        assert fd is not None
        while not source.eof:
            try:
                data = os.read(fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as err:
                if err.errno != errno.EIO:
                    raise
                data = b""  # a terminal's master: no process holds the slave any more
            if not data:
                self._mark_eof(source)
                return
            if source.stream is Stream.PTY:
                data = _read_more(fd, data)
            await self._emit_output(source.stream, data)
            # A fast producer keeps the pipe readable and delivery may not wait: without a
            # checkpoint this loop would hold the event loop for the whole flood.
            await trio.lowlevel.checkpoint()

    def _mark_eof(self, source: _Source) -> None:
        source.eof = True
        if all(each.eof for each in self._sources):
            self._pipes_eof.set()

    def _drain_readable(self) -> list[tuple[Stream, bytes]]:
        """What the process wrote before it was reaped: read it so it is sequenced first.

        Seeing EOF here too means ``closed`` need not wait for the pumps to wake up.
        """
        drained = []
        for source in self._sources:
            while source.fd is not None and not source.eof:
                try:
                    data = os.read(source.fd, READ_CHUNK_BYTES)
                except OSError as err:
                    if err.errno != errno.EIO:
                        break  # EAGAIN: nothing more yet
                    data = b""
                if not data:
                    self._mark_eof(source)
                    break
                drained.append((source.stream, data))
        return drained

    async def _emit_output(self, stream: Stream, data: bytes) -> None:
        tail = self._tails[stream]
        tail += data[-TAIL_BYTES:]
        del tail[:-TAIL_BYTES]
        seq = self._next_seq()
        self.retention.append(seq, stream, data)
        _observe.output(self, stream.value, len(data))
        await self._emit(OutputEvent(process_id=self.process_id, seq=seq, stream=stream, chunk=data))

    async def _emit(self, event: ProcessEvent) -> None:
        await self._deliver(event)

    async def _wait_for_exit(self) -> tuple[int, resource.struct_rusage]:
        """Reap exactly this child (pidfd + wait4 by pid: never ``waitpid(-1)``)."""
        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        _pid, status, rusage = os.wait4(self.pid, 0)
        self._popen.returncode = os.waitstatus_to_exitcode(status)
        return status, rusage

    async def _kill_and_reap(self) -> None:
        """On cancellation: kill the tree and always wait for the child (like trio.run_process)."""
        if self._popen.returncode is not None:
            return
        self.signal_tree(signal_module.SIGKILL)
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_AFTER_KILL_SECONDS):
            await self._wait_for_exit()

    async def _reap(self) -> None:
        status, rusage = await self._wait_for_exit()
        duration_ms = (time.monotonic() - self._started) * 1000.0
        signum: int | None = None
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            exit_code, signal_name = 128 + signum, _signal_name(signum)
        else:
            exit_code, signal_name = os.WEXITSTATUS(status), None
        if self._terminal_channel is not None:
            # The master is sent before the exec: it is in the socket by now, or never comes.
            with trio.move_on_after(TERMINAL_SETTLE_SECONDS):
                await self._terminal_settled.wait()
        # Output written before the exit is in the pipes now: sequence it before `exited`.
        for stream, data in self._drain_readable():
            await self._emit_output(stream, data)
        report = await self._denial_report(exit_code)
        # Which resource limit the kernel says was hit (sandbox/_limits.py): also a denial.
        limits = self._plan.limits.verdict(signum, rusage.ru_utime + rusage.ru_stime, timed_out=self.timed_out)
        self._move(_Lifecycle.EXITED)
        self.exited = ExitedEvent(
            process_id=self.process_id,
            seq=self._next_seq(),
            exit_code=exit_code,
            signal=signal_name,
            timed_out=self.timed_out,
            sandbox_denied=report.denied or limits.exceeded is not None,
            duration_ms=round(duration_ms, 3),
            usage=Usage(
                user_cpu_ms=round(rusage.ru_utime * 1000.0, 3),
                system_cpu_ms=round(rusage.ru_stime * 1000.0, 3),
                max_rss_kb=rusage.ru_maxrss,
            ),
            denials=report.denials + limits.denials,
            sandbox_denied_source=report.source,
            limit_exceeded=limits.exceeded,
        )
        await self._emit(self.exited)

    async def _denial_report(self, exit_code: int) -> DenialReport:
        """The sandbox's verdict; a failure to reach one must not cost the client its record.

        With a terminal, stdout and stderr are one stream: the stderr heuristic reads the
        terminal's output (the kernel-audit source does not read output at all).
        """
        diagnostics = self._tails[Stream.PTY] if self.is_tty else self._tails[Stream.STDERR]
        try:
            return await self._sandbox.denial_report(
                self._plan, self.pid, exit_code, bytes(self._tails[Stream.STDOUT]), bytes(diagnostics)
            )
        except Exception:
            log.exception("denial report failed for %s; sandboxDenied is unknown", self.process_id)
            return DenialReport(denied=False, denials=(), source="unknown")

    async def _enforce_timeout(self, timeout: float) -> None:
        await trio.sleep(timeout)
        if self._lifecycle.state is _Lifecycle.RUNNING:
            self.timed_out = True
        self.signal_tree(signal_module.SIGKILL)

    # --- control -----------------------------------------------------------------------

    def signal_tree(self, signum: int) -> bool:
        return _tree.signal_tree(self.pid, self._marker, signum, reaped=self._popen.returncode is not None)

    def signal_group(self, signum: int) -> bool:
        """``process/signal``: the command's process group; with a terminal, its foreground
        process group (what Ctrl-C reaches) -- and for anything but SIGINT the session
        leader's group too, so that terminate/hangup/kill reach the shell behind a job."""
        if self.is_closed:
            return False
        if self.terminal is not None:
            return self._signal_terminal(signum)
        if self.is_tty:
            # The master has not arrived yet: the command may have left the launcher's group
            # for its own session already, so every member of the tree gets it.
            return self.signal_tree(signum)
        return _tree.signal_tree(
            self.pid, self._marker, signum, reaped=self._popen.returncode is not None, group_only=True
        )

    async def terminate(self, grace: float) -> None:
        """SIGTERM to the whole tree, SIGKILL after ``grace`` seconds if it still runs."""
        self.signal_tree(signal_module.SIGTERM)
        with trio.move_on_after(grace):
            await self.closed_event.wait()
            return
        self.signal_tree(signal_module.SIGKILL)

    def _signal_terminal(self, signum: int) -> bool:
        assert self.terminal is not None
        groups: list[int] = []
        foreground = self.terminal.foreground_group()
        if foreground is not None:
            groups.append(foreground)
        session = self.terminal.session() if signum != signal_module.SIGINT else None
        if session is not None and session not in groups:
            groups.append(session)
        delivered = False
        for group in groups:
            try:
                os.killpg(group, signum)
                delivered = True
            except (ProcessLookupError, PermissionError):
                pass
        return delivered

    def kill_now(self) -> None:
        self.signal_tree(signal_module.SIGKILL)

    def resize(self, size: TerminalSize) -> None:
        """``process/resize``: the terminal's new window size (kept until the master arrives;
        a no-op once the terminal is gone)."""
        assert self.is_tty
        if self.terminal is None:
            if not self._terminal_settled.is_set():
                self._pending_size = size
            return
        self._resize_now(size)

    def _resize_now(self, size: TerminalSize) -> None:
        assert self.terminal is not None
        try:
            self.terminal.resize(size)
        except OSError:
            pass  # closed already

    async def write_stdin(self, data: bytes, write_id: str | None, eof: bool) -> bool:
        """Write to stdin; a repeated ``write_id`` is not applied again but gets the first outcome.

        Returns:
            False if stdin is not piped or already closed (nothing was written).
        """
        async with self._stdin_lock:
            if write_id is not None and write_id in self._write_ids:
                return self._write_ids[write_id]
            accepted = await self._write_all(data, eof)
            if write_id is not None:
                self._write_ids[write_id] = accepted
                if len(self._write_ids) > MAX_WRITE_IDS:
                    del self._write_ids[next(iter(self._write_ids))]
            return accepted

    async def _write_all(self, data: bytes, eof: bool) -> bool:
        if self._terminal_channel is not None:
            return await self._type(data, eof)
        if self._stdin_fd is None:
            return False
        view = memoryview(data)
        try:
            while view:
                try:
                    written = os.write(self._stdin_fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._stdin_fd)
                    continue
                view = view[written:]
        except trio.ClosedResourceError:  # stdin was closed while we waited
            return False
        except OSError:  # EPIPE: the child closed its stdin
            self._close_stdin()
            return False
        if eof:
            self._close_stdin()
        return True

    async def _type(self, data: bytes, eof: bool) -> bool:
        """Write to the terminal (like typing). ``eof`` types VEOF (``Terminal.eof_bytes``);
        unlike a pipe the input stays open: a terminal's EOF ends one read, not the input."""
        await self._terminal_settled.wait()
        terminal = self.terminal
        if terminal is None or terminal.fd < 0:
            return False
        fd = terminal.fd
        terminal.wrote(data)
        view = memoryview(data + terminal.eof_bytes() if eof else data)
        try:
            while view:
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
                    continue
                view = view[written:]
        except (trio.ClosedResourceError, OSError):  # closed while we waited; EIO: no slave
            return False
        return True

    def _close_stdin(self) -> None:
        if self._stdin_fd is not None:
            fd, self._stdin_fd = self._stdin_fd, None
            trio.lowlevel.notify_closing(fd)  # wakes a write waiting on it
            _close_quietly(fd)

    # --- reading -----------------------------------------------------------------------

    async def wait_for_change(self, after_seq: int, timeout: float) -> None:
        """Long-poll: return when a seq beyond ``after_seq`` exists, on close, or on timeout."""
        with trio.move_on_after(timeout):
            while self._last_seq <= after_seq and not self.is_closed:
                await self._changed.wait()

    def read(self, after_seq: int, max_bytes: int | None) -> ReadResult:
        chunks, truncated = self.retention.read(after_seq, max_bytes)
        next_seq = chunks[-1].seq + 1 if truncated else self._last_seq + 1
        exited = self.exited
        return ReadResult(
            chunks=tuple(chunks),
            next_seq=next_seq,
            retained_from_seq=self.retention.retained_from_seq,
            exited=exited is not None,
            exit_code=exited.exit_code if exited else None,
            signal=exited.signal if exited else None,
            timed_out=exited.timed_out if exited else False,
            sandbox_denied=exited.sandbox_denied if exited else None,
            closed=self.is_closed,
            last_seq=self._last_seq,
            duration_ms=exited.duration_ms if exited else None,
            usage=exited.usage if exited else None,
            denials=exited.denials if exited else (),
            sandbox_denied_source=exited.sandbox_denied_source if exited else None,
            evicted_bytes=self.retention.evicted_bytes,
            limit_exceeded=exited.limit_exceeded if exited else None,
        )


async def wait_closed(processes: Iterable[ManagedProcess], timeout: float) -> None:
    """Wait until every one of ``processes`` has closed, or ``timeout`` seconds passed."""
    with trio.move_on_after(timeout):
        for process in processes:
            await process.closed_event.wait()


def _read_more(fd: int, first: bytes) -> bytes:
    """A terminal's master hands out at most a few KiB per read (the line discipline's
    buffer): gather what is there already, up to READ_CHUNK_BYTES, into one event."""
    parts = [first]
    size = len(first)
    while size < READ_CHUNK_BYTES:
        try:
            more = os.read(fd, READ_CHUNK_BYTES - size)
        except OSError:  # EAGAIN, or EIO (the next read in the pump sees it again)
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal_module.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"
