"""Sessions: who owns which processes, which connection receives their events, and for how long.

A session outlives its connection. When the connection drops it is *detached* for the
TTL (processes run on, output is retained); ``initialize{resumeSessionId}`` re-attaches
it; resuming an attached session takes it over from the old connection. Every attach
bumps the generation, so a stale connection's teardown cannot detach a session it no
longer owns. A client that closes normally (1000) while the session holds nothing more
ends it at once (``client_done``): only an abnormal drop leaves a session waiting.

State table (``Session.state``; every move goes through ``Session._move``):

==========  ==============================================  =======================================
state       meaning                                         leaves on
==========  ==============================================  =======================================
DETACHED    no connection; the TTL runs (also the state     attach -> ATTACHED; TTL expired, or the
            of a new session until its initialize ends)     peer's detached cap evicts it -> ENDING
ATTACHED    one connection receives its events              attach (takeover) -> ATTACHED; the
                                                            connection dropped -> DETACHED; a 1000
                                                            close with nothing held -> ENDING
ENDING      its trees are being killed (bounded wait)       the kill settled -> ENDED
ENDED       forgotten by the server; every tree killed      (terminal)
==========  ==============================================  =======================================

Any state moves to ENDED when the server cancels the session (shutdown, second signal).
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import secrets
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

from protocol import (
    CloseCode,
    Delivery,
    EmptyResult,
    ErrorCode,
    ListResult,
    OutputEvent,
    ProcessEvent,
    ProcessInfo,
    ProtocolError,
    ReadParams,
    ReadResult,
    ReleaseParams,
    ResizeParams,
    SandboxMode,
    SignalParams,
    SignalResult,
    StartParams,
    StartResult,
    TerminalSize,
    TerminateParams,
    TerminateResult,
    WriteParams,
    WriteResult,
    WriteStatus,
)

from . import _observe, _spawn, _tree
from ._config import ServerConfig
from ._lifecycle import Lifecycle
from ._outbound import OutboundQueue
from ._process import ManagedProcess, wait_closed
from ._pty import DEFAULT_SIZE, TerminalChannel
from ._retention import RetainedOutput, RetentionBudget
from .sandbox import Sandbox, SandboxUnavailable, TerminalRequest

log = logging.getLogger(__name__)

# How long TTL expiry and shutdown wait for killed trees to report `closed`.
KILL_SETTLE_SECONDS: Final = 5.0
# After a lossless resume, how long a running process's live output waits for the client's
# catch-up read before flowing anyway (a client that never reads must not hold it forever).
CATCH_UP_WAIT_SECONDS: Final = 10.0


class SessionState(enum.Enum):
    ATTACHED = "attached"
    DETACHED = "detached"
    ENDING = "ending"
    ENDED = "ended"


_ALLOWED: Final = {
    (SessionState.DETACHED, SessionState.ATTACHED),
    (SessionState.ATTACHED, SessionState.ATTACHED),
    (SessionState.ATTACHED, SessionState.DETACHED),
    (SessionState.ATTACHED, SessionState.ENDING),
    (SessionState.DETACHED, SessionState.ENDING),
    (SessionState.ATTACHED, SessionState.ENDED),
    (SessionState.DETACHED, SessionState.ENDED),
    (SessionState.ENDING, SessionState.ENDED),
}
_LIVE: Final = frozenset({SessionState.ATTACHED, SessionState.DETACHED})


class SessionHost(Protocol):
    """What a session needs from the server that holds it."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def sandbox(self) -> Sandbox: ...

    @property
    def id(self) -> str: ...

    @property
    def retention_budget(self) -> RetentionBudget: ...

    @property
    def default_cwd(self) -> str: ...

    @property
    def shutting_down(self) -> bool: ...

    def session_detached(self, session: Session) -> None:
        """The session just detached (the per-peer cap is enforced here)."""

    def session_ended(self, session: Session) -> None:
        """The session has ended: forget it."""


@attrs.define(eq=False)
class Attachment:
    """A connection as its session sees it."""

    generation: int
    delivery: Delivery
    queue: OutboundQueue
    close: Callable[[int, str], None]


class Session:
    """One client's processes and their delivery state.

    Args:
        host: the server that holds it.
        peer: who created it (the remote address for TCP, None for stdio): the per-peer cap
            on detached sessions counts by it.
    """

    def __init__(self, host: SessionHost, peer: str | None = None) -> None:
        # Hex: an id is typed on command lines (`exec-client ps --session ID`), where a
        # url-safe token's leading '-' (1 in 64) reads as an option.
        self.id = secrets.token_hex(16)
        self.peer = peer
        self._server = host
        self._config = host.config
        self._lifecycle = Lifecycle(f"session {self.id}", SessionState.DETACHED, _ALLOWED)
        self.processes: dict[str, ManagedProcess] = {}
        self._tombstones: collections.OrderedDict[str, ErrorCode] = collections.OrderedDict()
        self.attachment: Attachment | None = None
        self.generation = 0
        # When it last detached (trio clock): the per-peer cap evicts the oldest first.
        self.detached_at = 0.0
        self._nursery: trio.Nursery | None = None
        self._ttl_scope: trio.CancelScope | None = None
        self._attached = trio.Event()
        self._lossless = False
        # Lossless resume: processes whose live output waits for the client's catch-up read,
        # so that retention does not slide past what the client has not seen yet.
        self._catch_up: dict[str, trio.Event] = {}
        self._order_locks: dict[str, trio.Lock] = {}
        # What each process's request costs while its record lives (argv and env are kept
        # for process/list): bounded per session, so that starts cannot hold gigabytes.
        self._command_bytes: dict[str, int] = {}

    # --- lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._lifecycle.state

    async def wait_ended(self) -> None:
        """Return once the session has ended (its trees killed, forgotten by the server)."""
        await self._lifecycle.wait_for({SessionState.ENDED})

    def _move(self, new: SessionState) -> None:
        """The one place the session's state changes (see the table in the module docstring)."""
        self._lifecycle.move(new)
        if new is SessionState.ATTACHED:
            self._attached.set()
        elif new is SessionState.DETACHED:
            self._attached = trio.Event()
        if new is not SessionState.DETACHED and self._ttl_scope is not None:
            self._ttl_scope.cancel()
            self._ttl_scope = None
        if new is SessionState.DETACHED:
            self.detached_at = trio.current_time()
            self._start_ttl()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The session's home: its processes' tasks live in this nursery."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.detached_at = trio.current_time()
                self._start_ttl()  # a session never attached (its client left) expires too
                task_status.started()
                await self._lifecycle.wait_for({SessionState.ENDING})
                self.stop_holding()  # release lossless pumps waiting for a resume or a catch-up read
                await self.kill_all(settle=KILL_SETTLE_SECONDS)
                nursery.cancel_scope.cancel()
        finally:
            for process in self.processes.values():
                process.kill_now()
                process.retention.release()
            self.processes.clear()
            self._move(SessionState.ENDED)
            self._server.session_ended(self)

    def attach(self, delivery: Delivery, queue: OutboundQueue, close: Callable[[int, str], None]) -> int:
        """Attach a connection, taking the session over from any older one.

        Returns:
            The generation the caller must present to ``detach``.
        """
        if self.state not in _LIVE:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "unknown or expired session")
        previous = self.attachment
        self.generation += 1
        self.attachment = Attachment(self.generation, delivery, queue, close)
        self._lossless = delivery is Delivery.LOSSLESS
        if self._lossless:
            for process in self.processes.values():
                if not process.is_closed:
                    self._catch_up.setdefault(process.process_id, trio.Event())
        self._move(SessionState.ATTACHED)
        if previous is not None:
            previous.close(CloseCode.TAKEN_OVER, "session taken over")
        return self.generation

    def detach(self, generation: int) -> None:
        """Detach the connection of ``generation``; a no-op for a stale generation."""
        if generation != self.generation or self.state is not SessionState.ATTACHED:
            return
        self.attachment = None
        self._move(SessionState.DETACHED)
        self._server.session_detached(self)

    def client_done(self, generation: int) -> None:
        """The client of ``generation`` closed normally (1000).

        The session ends at once if it holds nothing the client could still want: no
        process, running or closed, that was not released. Otherwise it is detached like
        after any drop (its TTL decides), so a client that closes while work is in flight
        can still resume and read its records.
        """
        if generation != self.generation or self.state is not SessionState.ATTACHED:
            return
        if self.processes:
            self.detach(generation)
            return
        self.attachment = None
        log.debug("session %s ended by its client", self.id)
        self._move(SessionState.ENDING)

    def end(self, why: str) -> None:
        """End the session now: kill every tree and forget it. Idempotent."""
        if self.state in _LIVE:
            # News only when it kills something: an empty session ending is routine.
            running = sum(1 for process in self.processes.values() if not process.is_closed)
            log.log(logging.INFO if running else logging.DEBUG, "session %s ends: %s; killing %d running command(s)", self.id, why, running)
            self.attachment = None
            self._move(SessionState.ENDING)

    def _start_ttl(self) -> None:
        assert self._nursery is not None
        self._ttl_scope = trio.CancelScope()
        self._nursery.start_soon(self._expire_after_ttl, self._ttl_scope)

    async def _expire_after_ttl(self, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self._config.detached_session_ttl)
            self.end(f"expired after {self._config.detached_session_ttl:.1f}s detached")

    def stop_holding(self) -> None:
        """Shutdown: lossless pumps waiting for a resume stop waiting (output stays retained)."""
        self._attached.set()
        for process_id in list(self._catch_up):
            self._release_catch_up(process_id)

    def _release_catch_up(self, process_id: str) -> None:
        barrier = self._catch_up.pop(process_id, None)
        if barrier is not None:
            barrier.set()

    def open_processes(self) -> list[ManagedProcess]:
        """Its processes that have not closed yet."""
        return [process for process in self.processes.values() if not process.is_closed]

    def kill_now(self) -> None:
        """SIGKILL every tree of the session (the caller waits for them if it needs to)."""
        for process in list(self.processes.values()):
            process.kill_now()

    async def kill_all(self, settle: float) -> None:
        self.kill_now()
        await wait_closed(list(self.processes.values()), settle)

    # --- delivery ------------------------------------------------------------------

    async def deliver(self, event: ProcessEvent) -> None:
        """Hand an event to the attached connection, per its delivery mode (protocol §8).

        In lossless mode an event may wait (for room, a resume, a catch-up read), and trio
        wakes a group of waiters in no set order: a per-process FIFO lock keeps one process's
        events in seq order through those waits.
        """
        if not self._lossless:
            await self._deliver(event)
            return
        lock = self._order_locks.setdefault(event.process_id, trio.Lock())
        try:
            lock.acquire_nowait()  # the common case: no scheduling point
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._deliver(event)
        finally:
            lock.release()

    async def _deliver(self, event: ProcessEvent) -> None:
        while True:
            # Every event of the process waits, not only output: seq order on the wire.
            barrier = self._catch_up.get(event.process_id)
            if barrier is not None and self._lossless and not self._server.shutting_down:
                with trio.move_on_after(CATCH_UP_WAIT_SECONDS):
                    await barrier.wait()
                self._release_catch_up(event.process_id)
                continue
            attachment = self.attachment
            if attachment is None:
                if (
                    self._lossless
                    and isinstance(event, OutputEvent)
                    and self.state is SessionState.DETACHED
                    and not self._server.shutting_down
                ):
                    # Lossless and nobody attached: hold the pipes until a resume (or TTL
                    # expiry kills the tree) rather than let retention evict output.
                    await self._attached.wait()
                    continue
                return  # the output is retained; the client reads it on resume
            try:
                if not isinstance(event, OutputEvent):
                    await attachment.queue.put(event)  # must-deliver: waits for room
                elif attachment.delivery is Delivery.LOSSLESS:
                    # The wait stops this pipe's pump: the backpressure of lossless mode.
                    await attachment.queue.put_output(event)
                else:
                    # Refused when full: dropped from the push stream, still retained; the
                    # client sees the seq gap and repairs it with one read.
                    if not attachment.queue.offer_output(event):
                        _observe.dropped(len(event.chunk))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The connection went away (it detached before abandoning its queue). A
                # lossless chunk goes to the next connection, waiting above while detached;
                # anything else is retained and repaired by the resumed client's read.
                if self._lossless and isinstance(event, OutputEvent) and attachment is not self.attachment:
                    continue
            return

    # --- methods ---------------------------------------------------------------------

    def _process(self, process_id: str) -> ManagedProcess:
        process = self.processes.get(process_id)
        if process is not None:
            return process
        tombstone = self._tombstones.get(process_id)
        if tombstone is ErrorCode.PROCESS_RELEASED:
            raise ProtocolError(ErrorCode.PROCESS_RELEASED, f"process {process_id!r} was released")
        if tombstone is ErrorCode.UNKNOWN_PROCESS:
            raise ProtocolError(ErrorCode.UNKNOWN_PROCESS, f"process {process_id!r} expired")
        raise ProtocolError(ErrorCode.UNKNOWN_PROCESS, f"unknown process {process_id!r}")

    def start(self, params: StartParams, *, max_mode: SandboxMode | None = None) -> tuple[StartResult, ManagedProcess]:
        """Spawn a command; the caller sends the response, then calls ``begin``."""
        server = self._server
        if server.shutting_down:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server shutting down: no new processes")
        if params.size is not None and not params.tty:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, "invalid params: size needs tty: true @ $.params.size")
        if params.process_id in self.processes or params.process_id in self._tombstones:
            raise ProtocolError(ErrorCode.DUPLICATE_PROCESS, f"duplicate processId {params.process_id!r}")
        if len(self.processes) >= self._config.max_processes_per_session:
            raise ProtocolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"limit exceeded: at most {self._config.max_processes_per_session} processes per session",
            )
        command_bytes = _command_bytes(params)
        held = sum(self._command_bytes.values())
        if held and held + command_bytes > self._config.max_session_command_bytes:
            raise ProtocolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"limit exceeded: the session's commands hold over {self._config.max_session_command_bytes}"
                " bytes of argv and env (release closed processes)",
            )
        retain_bytes = params.retain_bytes or self._config.retain_bytes
        if retain_bytes > self._config.retain_total_bytes:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, "limit exceeded: retainBytes is above the server's total cap")
        try:
            policy = server.sandbox.resolve(params.sandbox, max_mode=max_mode)
        except SandboxUnavailable as exc:
            raise ProtocolError(ErrorCode.SANDBOX_UNAVAILABLE, f"sandbox unavailable: {exc}") from None
        # A relative cwd is the server's business: resolved against its own directory.
        cwd = os.path.join(server.default_cwd, params.cwd) if params.cwd else server.default_cwd
        marker = f"{server.id}:{secrets.token_hex(8)}"
        env = _spawn.build_env(params.env, params.inherit_env, marker, _tree.TREE_MARKER_VAR)
        _spawn.check_spawnable(params.argv[0], cwd, env)
        channel, terminal = self._terminal_for(params)
        try:
            plan = server.sandbox.prepare(policy, list(params.argv), cwd, env, limits=params.limits, terminal=terminal)
        except SandboxUnavailable as exc:
            _close(channel)
            raise ProtocolError(ErrorCode.SANDBOX_UNAVAILABLE, f"sandbox unavailable: {exc}") from None
        except OSError as exc:  # the private temp dir: ENOSPC, EMFILE... the host's state, not our bug
            _close(channel)
            raise _spawn.spawn_failed(exc, "sandbox setup") from None
        try:
            spawned = _spawn.spawn(
                plan.argv, cwd=cwd, env=plan.env, pipe_stdin=params.pipe_stdin, pass_fds=plan.pass_fds, terminal=channel
            )
        except ProtocolError:
            plan.cleanup()
            _close(channel)
            raise
        process = ManagedProcess(
            process_id=params.process_id,
            argv=params.argv,
            spawned=spawned,
            plan=plan,
            sandbox=server.sandbox,
            retention=RetainedOutput(retain_bytes, server.retention_budget),
            deliver=self.deliver,
            timeout=params.timeout_ms / 1000.0 if params.timeout_ms is not None else None,
            marker=marker,
            retain_after_close=(
                params.retain_after_close_ms / 1000.0
                if params.retain_after_close_ms is not None
                else self._config.retain_after_close
            ),
        )
        self.processes[params.process_id] = process
        self._command_bytes[params.process_id] = command_bytes
        _tree.register_waited(process.pid)
        return StartResult(process_id=params.process_id, pid=process.pid, sandbox_type=plan.sandbox_type), process

    @staticmethod
    def _terminal_for(params: StartParams) -> tuple[TerminalChannel | None, TerminalRequest | None]:
        """For ``tty: true``: the socketpair the launcher sends the master over, and its request."""
        if not params.tty:
            return None, None
        try:
            channel = TerminalChannel()
        except OSError as exc:  # EMFILE/ENFILE
            raise _spawn.spawn_failed(exc, "terminal channel") from None
        size = params.size or DEFAULT_SIZE
        return channel, TerminalRequest(fd=channel.launcher_fd, rows=size.rows, cols=size.cols)

    def begin(self, process: ManagedProcess) -> None:
        """Start pumping a process whose start response is already queued."""
        assert self._nursery is not None
        self._nursery.start_soon(self._supervise, process)

    async def _supervise(self, process: ManagedProcess) -> None:
        observed = False

        def observe_close() -> None:
            nonlocal observed
            observed = True
            _observe.closed(self.id, process, attached=self.attachment is not None)

        try:
            await process.run(on_closed=observe_close)
        finally:
            _tree.unregister_waited(process.pid)
            if not observed:  # cancelled before it closed (the server is stopping)
                observe_close()
        await trio.sleep(process.retain_after_close)
        self._forget(process, ErrorCode.UNKNOWN_PROCESS)

    def _forget(self, process: ManagedProcess, tombstone: ErrorCode) -> None:
        if self.processes.get(process.process_id) is not process:
            return
        del self.processes[process.process_id]
        self._command_bytes.pop(process.process_id, None)
        self._release_catch_up(process.process_id)
        self._order_locks.pop(process.process_id, None)
        process.retention.release()
        self._tombstones[process.process_id] = tombstone
        while len(self._tombstones) > self._config.max_tombstones:
            self._tombstones.popitem(last=False)

    async def wait_readable(self, params: ReadParams) -> ManagedProcess:
        """The long-poll half of ``process/read``: returns the process to ``read_now``."""
        process = self._process(params.process_id)
        if params.wait_ms and not process.is_closed and process.next_seq <= params.after_seq + 1:
            await process.wait_for_change(params.after_seq, params.wait_ms / 1000.0)
        return process

    def read_now(self, process: ManagedProcess, params: ReadParams) -> ReadResult:
        """The answer of ``process/read`` (never waits)."""
        result = process.read(params.after_seq, params.max_bytes)
        if not result.chunks or result.next_seq > (result.last_seq or 0):
            # The client has caught up to what was retained: live output may flow again.
            self._release_catch_up(params.process_id)
        return result

    async def write(self, params: WriteParams) -> WriteResult:
        process = self.processes.get(params.process_id)
        if process is None:
            return WriteResult(status=WriteStatus.UNKNOWN_PROCESS)
        accepted = await process.write_stdin(params.chunk, params.write_id, params.eof)
        return WriteResult(status=WriteStatus.ACCEPTED if accepted else WriteStatus.STDIN_CLOSED)

    def signal(self, params: SignalParams) -> SignalResult:
        process = self._process(params.process_id)
        return SignalResult(delivered=process.signal_group(_tree.SIGNALS[params.signal.value]))

    def resize(self, params: ResizeParams) -> EmptyResult:
        """``process/resize``: a ``tty: true`` process's window size; a no-op once it closed."""
        process = self._process(params.process_id)
        if not process.is_tty:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: process {params.process_id!r} has no terminal (it was started without tty: true)"
                " @ $.params.processId",
            )
        process.resize(TerminalSize(rows=params.rows, cols=params.cols))
        return EmptyResult()

    def terminate(self, params: TerminateParams) -> TerminateResult:
        process = self._process(params.process_id)
        running = process.exited is None
        if not process.is_closed:
            assert self._nursery is not None
            self._nursery.start_soon(process.terminate, params.grace_ms / 1000.0)
        return TerminateResult(running=running)

    def release(self, params: ReleaseParams) -> EmptyResult:
        process = self.processes.get(params.process_id)
        if process is None:
            if params.process_id in self._tombstones:
                return EmptyResult()  # idempotent
            raise ProtocolError(ErrorCode.UNKNOWN_PROCESS, f"unknown process {params.process_id!r}")
        if not process.is_closed:
            raise ProtocolError(ErrorCode.NOT_TERMINAL, f"process {params.process_id!r} has not closed")
        self._forget(process, ErrorCode.PROCESS_RELEASED)
        return EmptyResult()

    def list(self) -> ListResult:
        return ListResult(
            processes=tuple(
                ProcessInfo(
                    process_id=process.process_id,
                    pid=process.pid,
                    argv=process.argv,
                    state=process.state,
                    next_seq=process.next_seq,
                )
                for process in self.processes.values()
            )
        )


def _command_bytes(params: StartParams) -> int:
    env = params.env or {}
    return sum(map(len, params.argv)) + sum(len(name) + len(value) for name, value in env.items())


def _close(channel: TerminalChannel | None) -> None:
    if channel is not None:
        channel.close()
