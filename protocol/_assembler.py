"""The client's terminal-record assembler: a pure state machine (protocol doc §9).

One ``Assembler`` per process. It is sans-io: no trio, no clock, no sockets. The I/O layer
feeds it what arrived — pushed events, ``process/read`` results, and three signals of its
own (the gap grace expired, the connection was resumed, the connection is lost for good) —
and every input returns a ``Progress``: the output chunks that became contiguous (in seq
order, for a streaming handle) and exactly one action:

- ``Wait(hole=...)``: nothing to do until the next input. ``hole=True`` means events are
  held behind a missing seq; the I/O layer runs a short grace timer and calls
  ``gap_grace_expired()`` if it fires before the hole is filled.
- ``NeedRead(after_seq, wait_ms, max_bytes)``: send exactly this ``process/read`` and feed
  its result to ``read_result()``. At most one read is outstanding at a time; while it is,
  inputs answer ``Wait``.
- ``Complete(record)``: the terminal record converged. Later inputs are ignored and answer
  the same ``Complete``.

State table (``Assembler.state``, one field; it changes only in ``_move``, called from
``_decide`` and ``_finish``; ``_ALLOWED`` is the table, an illegal move raises
``AssemblerError`` naming it):

==========  =============================================  ===================================
state       meaning                                        leaves on
==========  =============================================  ===================================
RECEIVING   push mode, no hole, no read outstanding        event beyond a hole -> HOLDING;
                                                           every seq 1..closed held + exit
                                                           known -> COMPLETE; legacy exited
                                                           without sandboxDenied -> READING
                                                           (one compatibility read)
HOLDING     events held behind a hole (reorder buffer)     hole filled -> RECEIVING; closed
                                                           behind the hole (``in_order``),
                                                           buffer overflow or gap grace
                                                           expired -> READING
READING     one process/read outstanding                   result: more retained -> READING
                                                           again; terminal state held ->
                                                           COMPLETE; else RECEIVING/HOLDING
POLLING     legacy server (no pushEvents): long-poll       result holds the terminal state ->
            read outstanding (none before ``begin``)       COMPLETE; else POLLING again
COMPLETE    the record is final                            (terminal)
==========  =============================================  ===================================

What the state does not say is data, not state: the outstanding ``NeedRead`` (there is one
exactly in READING, and in POLLING after ``begin``), why a repair read is due (``_repair``:
one field for an overflowed buffer, an expired grace timer or an unreadable frame), and the
facts the record is built from (seqs, the exit, where each part came from).

``event_unreadable()`` (a frame of this process that did not decode) asks for a read as
soon as none is outstanding. ``connection_resumed()`` abandons an outstanding read and asks for a read from the last
contiguous seq (READING/POLLING); ``connection_lost(reason)`` and ``read_failed(reason)``
finish with ``failure`` set and never invent an exit code.

Completion: ``polled`` on a legacy server; ``recovered`` when any part of the record (a
chunk, the exit, the close, or an eviction) was learned from a read; ``pushed`` otherwise —
so a compatibility read that only supplies ``sandboxDenied`` keeps ``pushed`` (with
``readCalls`` 1).
"""

from __future__ import annotations

import enum
import io
from typing import Final

import attrs

from ._messages import (
    ClosedEvent,
    Denial,
    ExitedEvent,
    OutputChunk,
    OutputEvent,
    ReadResult,
    Stream,
    Usage,
)

# Out-of-order output events held while waiting for a missing seq. Beyond either bound the
# assembler stops holding (drops the highest seqs, which the server still retains) and
# repairs with a read instead of growing without limit.
REORDER_BUFFER_EVENTS: Final = 256
REORDER_BUFFER_BYTES: Final = 8 * 1024 * 1024
# Payload cap per process/read: keeps each response well under the WebSocket message limit
# after base64 and JSON (docs/protocol.md §5.3: a read answers at most 4 MiB of payload).
READ_MAX_BYTES: Final = 4 * 1024 * 1024
# How long a legacy long-poll read may wait on the server for something new.
LONG_POLL_WAIT_MS: Final = 10_000
# Per-stream cap of kept output; beyond it the record keeps head + tail.
DEFAULT_MAX_OUTPUT_BYTES: Final = 64 * 1024 * 1024

_STREAMS: Final = (Stream.STDOUT, Stream.STDERR)
# Where each wire stream is kept in the record: a ``tty: true`` process has one output,
# its terminal's (stdout and stderr merged on the pty), and the record holds it as stdout.
_RECORD_STREAM: Final = {Stream.STDOUT: Stream.STDOUT, Stream.STDERR: Stream.STDERR, Stream.PTY: Stream.STDOUT}


class Completion(str, enum.Enum):
    """Where the terminal record came from."""

    PUSHED = "pushed"
    RECOVERED = "recovered"
    POLLED = "polled"

    # A record prints ``completion='pushed'``: the wire word, not ``<Completion.PUSHED...>``.
    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)


class AssemblerState(enum.Enum):
    RECEIVING = "receiving"
    HOLDING = "holding"
    READING = "reading"
    POLLING = "polling"
    COMPLETE = "complete"


class AssemblerError(RuntimeError):
    """An input that is illegal in the assembler's current state (an I/O-layer bug)."""


_S = AssemblerState
_ALLOWED: Final = frozenset(
    {(state, state) for state in _S}  # COMPLETE -> COMPLETE: later inputs answer the same Complete
    | {(_S.RECEIVING, other) for other in (_S.HOLDING, _S.READING, _S.COMPLETE)}
    | {(_S.HOLDING, other) for other in (_S.RECEIVING, _S.READING, _S.POLLING, _S.COMPLETE)}
    | {(_S.READING, other) for other in (_S.RECEIVING, _S.HOLDING, _S.COMPLETE)}
    | {(_S.POLLING, other) for other in (_S.HOLDING, _S.COMPLETE)}
)


class _Repair(enum.Enum):
    """Why a repair read is due (the three reasons are cleared together when it is sent)."""

    #: The reorder buffer overflowed, or the gap grace timer fired: read if a hole remains.
    HOLE = "hole"
    #: A frame of this process did not decode: read whatever else holds.
    UNREADABLE = "unreadable"


@attrs.frozen(kw_only=True)
class TerminalRecord:
    """The complete, converged result of one process (protocol doc §9).

    ``exit_code`` is ``None`` only when no exit was ever observed (then ``failure`` says
    why). ``stdout``/``stderr`` are exact unless ``*_omitted_bytes`` (client cap: head +
    tail kept) or ``output_lost`` (evicted on the server before the client saw it;
    ``*_lost_bytes`` is the exact count, ``None`` if the server did not report it).
    ``sandbox_denied`` is ``None`` only if the server never said. For a ``tty: true``
    process ``stdout`` holds the terminal's output (stream ``"pty"``: what the program
    wrote to stdout and stderr, through the pty's line discipline) and ``stderr`` is empty.
    """

    process_id: str
    argv: tuple[str, ...]
    exit_code: int | None
    signal: str | None
    timed_out: bool
    sandbox_denied: bool | None
    stdout: bytes
    stderr: bytes
    stdout_omitted_bytes: int
    stderr_omitted_bytes: int
    output_lost: bool
    stdout_lost_bytes: int | None
    stderr_lost_bytes: int | None
    duration_ms: float | None
    usage: Usage | None
    completion: Completion
    read_calls: int
    failure: str | None
    denials: tuple[Denial, ...] = ()
    sandbox_denied_source: str | None = None
    # The resource limit the server says was hit: "memory" | "pids" | "cpu" | "fileSize".
    limit_exceeded: str | None = None


@attrs.frozen
class Wait:
    """Nothing to send. ``hole``: events are held behind a missing seq (run the grace timer)."""

    hole: bool = False


@attrs.frozen(kw_only=True)
class NeedRead:
    """Send ``process/read {afterSeq, waitMs, maxBytes}`` and feed the result back."""

    after_seq: int
    wait_ms: int
    max_bytes: int


@attrs.frozen
class Complete:
    record: TerminalRecord


Action = Wait | NeedRead | Complete


@attrs.frozen
class Progress:
    """Newly contiguous output chunks (in seq order) and the one thing to do next."""

    chunks: tuple[OutputChunk, ...]
    action: Action


@attrs.frozen(kw_only=True)
class _ExitInfo:
    exit_code: int
    signal: str | None
    timed_out: bool
    sandbox_denied: bool | None
    duration_ms: float | None
    usage: Usage | None
    denials: tuple[Denial, ...]
    sandbox_denied_source: str | None
    limit_exceeded: str | None = None


class _Capture:
    """One stream's kept bytes: everything up to the cap, then head + tail (half each)."""

    def __init__(self, limit: int | None) -> None:
        self._head_limit = None if limit is None else limit // 2
        self._tail_limit = None if limit is None else limit - limit // 2
        # The head is copied into one growing buffer as chunks arrive, while the stream
        # still flows; value() then hands that buffer out without a copy (BytesIO's
        # getvalue shares its bytes). A join at the end was a copy of the whole stream
        # after its last byte, 23-29% of the client's time on a 100 MB stream.
        self._head = io.BytesIO()
        self._tail = bytearray()
        self.omitted = 0

    def append(self, data: bytes) -> None:
        if self._head_limit is None or self._tail_limit is None:
            self._head.write(data)
            return
        room = self._head_limit - self._head.tell()
        if room > 0:
            self._head.write(memoryview(data)[:room])
            data = data[room:]
        if not data:
            return
        self._tail += data
        excess = len(self._tail) - self._tail_limit
        if excess > 0:
            # bytearray deletes from the front in O(1) amortised, so a long stream stays cheap.
            del self._tail[:excess]
            self.omitted += excess

    def value(self) -> bytes:
        if not self._tail:
            return self._head.getvalue()
        return b"".join((self._head.getvalue(), self._tail))


class Assembler:
    """Assemble one process's ``TerminalRecord`` from pushed events and reads.

    Args:
        process_id: the process this assembler serves.
        argv: copied into the record.
        push_events: the server's ``capabilities.pushEvents``; ``False`` selects legacy
            long-polling (call ``begin()`` for the first read).
        in_order: the server pushes each process's events in seq order (ours does), so a
            hole behind ``closed`` is a loss, read at once. ``False`` (Codex's server, whose
            pipes and exit race to the wire): such a hole waits the gap grace like any other.
        max_output_bytes: per-stream cap of kept output (``None``: unbounded).
        reorder_events / reorder_bytes: bounds of the reorder buffer.
        read_max_bytes: ``maxBytes`` of every read the assembler asks for.
        long_poll_ms: ``waitMs`` of legacy long-poll reads.
    """

    def __init__(
        self,
        process_id: str,
        argv: tuple[str, ...] | list[str],
        *,
        push_events: bool = True,
        in_order: bool = True,
        max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
        reorder_events: int = REORDER_BUFFER_EVENTS,
        reorder_bytes: int = REORDER_BUFFER_BYTES,
        read_max_bytes: int = READ_MAX_BYTES,
        long_poll_ms: int = LONG_POLL_WAIT_MS,
    ) -> None:
        self.process_id = process_id
        self.argv = tuple(argv)
        self.push_events = push_events
        self.in_order = in_order
        self._reorder_events = reorder_events
        self._reorder_bytes = reorder_bytes
        self._read_max_bytes = read_max_bytes
        self._long_poll_ms = long_poll_ms

        # Every seq <= _contiguous is accounted for (consumed, a known non-output event, or
        # declared lost). _accounted_through: a read proved every seq up to it is either in
        # its chunks or a non-output event, so missing seqs there are not holes.
        self._contiguous = 0
        self._accounted_through = 0
        self._held: dict[int, OutputEvent | OutputChunk] = {}
        self._held_bytes = 0
        self._exit: _ExitInfo | None = None
        self._exit_seq: int | None = None
        self._closed_seq: int | None = None
        self._terminal_from_read = False  # a read held the complete terminal state
        self._exit_from_read = False
        self._compat_read: NeedRead | None = None  # the one sandboxDenied compatibility read
        self._compat_done = False
        self._repair: _Repair | None = None

        self._outstanding: NeedRead | None = None
        self._read_calls = 0
        self._recovered = False
        self._server_failure: str | None = None

        self._captures = {stream: _Capture(max_output_bytes) for stream in _STREAMS}
        self._received = {stream: 0 for stream in _STREAMS}  # bytes consumed, before the cap
        self._output_lost = False
        self._lost: dict[Stream, int] | None = {stream: 0 for stream in _STREAMS}

        self._emitted: list[OutputChunk] = []
        self._record: TerminalRecord | None = None
        self._state = AssemblerState.RECEIVING if push_events else AssemblerState.POLLING

    # --- observation -------------------------------------------------------------------

    @property
    def state(self) -> AssemblerState:
        return self._state

    @property
    def last_contiguous_seq(self) -> int:
        return self._contiguous

    @property
    def read_calls(self) -> int:
        return self._read_calls

    @property
    def record(self) -> TerminalRecord | None:
        return self._record

    # --- inputs ------------------------------------------------------------------------

    def begin(self) -> Progress:
        """Call once after ``process/start`` succeeded: a legacy server needs the first poll."""
        return self._decide()

    def event(self, event: OutputEvent | ExitedEvent | ClosedEvent) -> Progress:
        """Feed one pushed event of this process (any order, duplicates allowed)."""
        if self._state is AssemblerState.COMPLETE:
            return self._decide()
        seq = event.seq
        if seq <= self._contiguous or seq <= self._accounted_through or seq in self._held:
            return self._decide()  # duplicate
        if self._closed_seq is not None and seq > self._closed_seq:
            return self._decide()  # nothing follows closed: a confused server; ignore it
        if isinstance(event, OutputEvent):
            self._hold(seq, event)
        elif isinstance(event, ExitedEvent):
            if seq != self._exit_seq:
                self._exit_seq = seq
                if self._exit is None or (self._exit.sandbox_denied is None and event.sandbox_denied is not None):
                    self._exit = _exit_from_event(event)
        else:
            self._closed_seq = seq
            # Held output beyond closed cannot exist; drop it rather than trust it.
            for held_seq in [s for s in self._held if s > seq]:
                self._unhold(held_seq)
        self._advance()
        return self._decide()

    def read_result(self, result: ReadResult) -> Progress:
        """Feed the result of the read this assembler asked for last."""
        if self._state is AssemblerState.COMPLETE:
            return self._decide()
        request = self._outstanding
        if request is None:
            raise AssemblerError(f"read result without an outstanding read (state {self._state.value})")
        self._outstanding = None
        if request is self._compat_read:
            self._compat_done = True
        if result.failure is not None:
            self._server_failure = result.failure

        if result.retained_from_seq > self._contiguous + 1:
            self._account_eviction(result)
        for chunk in result.chunks:
            if chunk.seq <= self._contiguous or chunk.seq in self._held:
                continue
            if self._closed_seq is not None and chunk.seq > self._closed_seq:
                continue
            self._store(chunk.seq, chunk)
            self._recovered = True

        if result.last_seq is not None:
            covered = result.next_seq - 1
        else:
            # Without lastSeq nextSeq only vouches for the chunks it returned.
            covered = max((chunk.seq for chunk in result.chunks), default=self._contiguous)
        if covered > self._accounted_through:
            self._accounted_through = covered

        if result.exited and result.exit_code is not None:
            if self._exit is None:
                self._exit = _exit_from_read(result)
                self._recovered = True
            elif self._exit.sandbox_denied is None:
                self._exit = attrs.evolve(
                    self._exit,
                    sandbox_denied=result.sandbox_denied,
                    denials=result.denials or self._exit.denials,
                    sandbox_denied_source=result.sandbox_denied_source,
                    limit_exceeded=result.limit_exceeded,
                )
            self._exit_from_read = True

        more_retained = result.last_seq is not None and result.next_seq <= result.last_seq
        if result.closed and not more_retained:
            holds_terminal = (
                result.next_seq > result.last_seq if result.last_seq is not None else not result.chunks
            )
            if holds_terminal:
                if self._closed_seq is None:
                    self._recovered = True
                self._terminal_from_read = True
                if result.last_seq is not None:
                    self._closed_seq = result.last_seq
                    self._accounted_through = max(self._accounted_through, result.last_seq)

        self._advance()
        if more_retained and not self._terminal_from_read:
            return self._decide(read_from=self._contiguous, wait_ms=0)
        if not self.push_events and not self._terminal_from_read:
            # Legacy: poll again; a result that returned chunks may have more behind it.
            return self._decide(read_from=self._contiguous, wait_ms=0 if result.chunks else self._long_poll_ms)
        return self._decide()

    def event_unreadable(self) -> Progress:
        """An event of this process arrived but could not be decoded: repair it with a read.

        Without this a malformed ``closed`` would leave no hole behind it and the record
        would wait forever.
        """
        if self._state is not AssemblerState.COMPLETE:
            self._repair = _Repair.UNREADABLE
        return self._decide()

    def gap_grace_expired(self) -> Progress:
        """The I/O layer's grace timer (started on ``Wait(hole=True)``) fired."""
        if self._state is not AssemblerState.COMPLETE and self._has_hole() and self._outstanding is None:
            self._want_hole_repair()
        return self._decide()

    def connection_resumed(self) -> Progress:
        """The session was resumed on a new connection: catch up from the last contiguous seq."""
        if self._state is AssemblerState.COMPLETE:
            return self._decide()
        self._outstanding = None
        return self._decide(read_from=self._contiguous, wait_ms=0 if self.push_events else self._long_poll_ms)

    def connection_lost(self, reason: str) -> Progress:
        """The connection is gone and could not be resumed: finish with ``failure`` set."""
        return self._fail(reason)

    def read_failed(self, reason: str) -> Progress:
        """The outstanding read was answered with an error: finish with ``failure`` set."""
        return self._fail(reason)

    # --- internals -----------------------------------------------------------------------

    def _fail(self, reason: str) -> Progress:
        if self._state is not AssemblerState.COMPLETE:
            self._outstanding = None
            self._finish(failure=reason)
        return self._decide()

    def _hold(self, seq: int, event: OutputEvent) -> None:
        self._store(seq, event)
        if seq == self._contiguous + 1:
            return
        # Bound the reorder buffer: drop the highest seqs (still retained on the server).
        while len(self._held) > self._reorder_events or self._held_bytes > self._reorder_bytes:
            self._unhold(max(self._held))
            self._want_hole_repair()

    def _store(self, seq: int, item: OutputEvent | OutputChunk) -> None:
        self._held[seq] = item
        self._held_bytes += len(item.chunk)

    def _unhold(self, seq: int) -> OutputEvent | OutputChunk:
        item = self._held.pop(seq)
        self._held_bytes -= len(item.chunk)
        return item

    def _consume(self, item: OutputEvent | OutputChunk) -> None:
        kept_as = _RECORD_STREAM[item.stream]
        self._received[kept_as] += len(item.chunk)
        self._captures[kept_as].append(item.chunk)
        self._emitted.append(
            item if isinstance(item, OutputChunk) else OutputChunk(seq=item.seq, stream=item.stream, chunk=item.chunk)
        )

    def _advance(self) -> None:
        while True:
            following = self._contiguous + 1
            if following in self._held:
                self._consume(self._unhold(following))
            elif not (
                following == self._exit_seq or following == self._closed_seq or following <= self._accounted_through
            ):
                break
            self._contiguous = following
            if self._closed_seq is not None and self._contiguous >= self._closed_seq:
                break

    def _account_eviction(self, result: ReadResult) -> None:
        """Output before ``retainedFromSeq`` is gone: keep what we hold, count what we lost."""
        boundary = result.retained_from_seq
        held_below = dict(self._received)
        missing = False
        for seq in range(self._contiguous + 1, boundary):
            item = self._held.get(seq)
            if item is not None:
                held_below[_RECORD_STREAM[item.stream]] += len(item.chunk)
            elif seq != self._exit_seq:
                missing = True
        # Consume what we hold below the boundary in seq order; the rest is lost.
        for seq in sorted(s for s in self._held if s < boundary):
            self._consume(self._unhold(seq))
        self._contiguous = boundary - 1
        self._accounted_through = max(self._accounted_through, self._contiguous)
        if result.evicted_bytes is not None:
            # A tty process's evicted output (evictedBytes.pty) is lost stdout, as it is kept.
            evicted = {
                Stream.STDOUT: result.evicted_bytes.stdout + result.evicted_bytes.pty,
                Stream.STDERR: result.evicted_bytes.stderr,
            }
            self._lost = {stream: max(0, evicted[stream] - held_below[stream]) for stream in _STREAMS}
            if any(self._lost.values()):
                self._output_lost = True
        elif missing:
            self._output_lost = True
            self._lost = None  # the server did not say how much
        if self._output_lost:
            self._recovered = True

    def _has_hole(self) -> bool:
        return bool(self._held) or (self._closed_seq is not None and self._contiguous < self._closed_seq)

    def _converged(self) -> bool:
        if self._terminal_from_read:
            return True
        return (
            self._closed_seq is not None
            and self._contiguous >= self._closed_seq
            and self._exit is not None
            and (self._exit.sandbox_denied is not None or self._exit_from_read or self._compat_done)
        )

    def _request(self, after_seq: int, wait_ms: int) -> NeedRead:
        self._outstanding = NeedRead(after_seq=after_seq, wait_ms=wait_ms, max_bytes=self._read_max_bytes)
        self._read_calls += 1
        self._repair = None
        return self._outstanding

    def _want_hole_repair(self) -> None:
        if self._repair is None:
            self._repair = _Repair.HOLE

    def _decide(self, *, read_from: int | None = None, wait_ms: int = 0) -> Progress:
        """The one place that picks the next action and the state."""
        action: Action
        if self._state is not AssemblerState.COMPLETE and self._outstanding is None:
            if self._converged():
                self._finish(failure=None)
            elif read_from is not None:
                self._request(read_from, wait_ms)
                return self._progress(self._outstanding_action())
            elif not self.push_events:
                if self._state is AssemblerState.POLLING and self._read_calls == 0:
                    self._request(self._contiguous, self._long_poll_ms)
                    return self._progress(self._outstanding_action())
            elif (
                self._closed_seq is not None and self._contiguous >= self._closed_seq and self._exit is not None
            ):
                # Everything converged but sandboxDenied: exactly one compatibility read.
                self._compat_read = self._request(self._contiguous, 0)
                return self._progress(self._outstanding_action())
            elif self._repair is _Repair.UNREADABLE or (
                self._has_hole()
                and ((self._closed_seq is not None and self.in_order) or self._repair is _Repair.HOLE)
            ):
                self._request(self._contiguous, 0)
                return self._progress(self._outstanding_action())

        if self._state is AssemblerState.COMPLETE:
            assert self._record is not None  # set by _finish with the move
            action = Complete(self._record)
        elif self._outstanding is not None:
            self._move(AssemblerState.READING if self.push_events else AssemblerState.POLLING)
            action = Wait(hole=False)
        elif self._has_hole():
            self._move(AssemblerState.HOLDING)
            action = Wait(hole=True)
        else:
            self._move(AssemblerState.RECEIVING if self.push_events else AssemblerState.POLLING)
            action = Wait(hole=False)
        return self._progress(action)

    def _move(self, new: AssemblerState) -> None:
        """The one place the state changes (``_ALLOWED`` is the table)."""
        if (self._state, new) not in _ALLOWED:
            raise AssemblerError(f"assembler {self.process_id}: {self._state.value} -> {new.value}")
        self._state = new

    def _outstanding_action(self) -> NeedRead:
        assert self._outstanding is not None
        self._move(AssemblerState.READING if self.push_events else AssemblerState.POLLING)
        return self._outstanding

    def _progress(self, action: Action) -> Progress:
        chunks = tuple(self._emitted)
        self._emitted.clear()
        return Progress(chunks, action)

    def _finish(self, *, failure: str | None) -> None:
        exit_info = self._exit
        if not self.push_events:
            completion = Completion.POLLED
        elif self._recovered:
            completion = Completion.RECOVERED
        else:
            completion = Completion.PUSHED
        if failure is None:
            failure = self._server_failure
        lost = self._lost
        self._record = TerminalRecord(
            process_id=self.process_id,
            argv=self.argv,
            exit_code=exit_info.exit_code if exit_info else None,
            signal=exit_info.signal if exit_info else None,
            timed_out=exit_info.timed_out if exit_info else False,
            sandbox_denied=exit_info.sandbox_denied if exit_info else None,
            stdout=self._captures[Stream.STDOUT].value(),
            stderr=self._captures[Stream.STDERR].value(),
            stdout_omitted_bytes=self._captures[Stream.STDOUT].omitted,
            stderr_omitted_bytes=self._captures[Stream.STDERR].omitted,
            output_lost=self._output_lost,
            stdout_lost_bytes=lost[Stream.STDOUT] if lost is not None else None,
            stderr_lost_bytes=lost[Stream.STDERR] if lost is not None else None,
            duration_ms=exit_info.duration_ms if exit_info else None,
            usage=exit_info.usage if exit_info else None,
            completion=completion,
            read_calls=self._read_calls,
            failure=failure,
            denials=exit_info.denials if exit_info else (),
            sandbox_denied_source=exit_info.sandbox_denied_source if exit_info else None,
            limit_exceeded=exit_info.limit_exceeded if exit_info else None,
        )
        self._held.clear()
        self._held_bytes = 0
        self._move(AssemblerState.COMPLETE)


def _exit_from_event(event: ExitedEvent) -> _ExitInfo:
    return _ExitInfo(
        exit_code=event.exit_code,
        signal=event.signal,
        timed_out=event.timed_out,
        sandbox_denied=event.sandbox_denied,
        duration_ms=event.duration_ms,
        usage=event.usage,
        denials=event.denials,
        sandbox_denied_source=event.sandbox_denied_source,
        limit_exceeded=event.limit_exceeded,
    )


def _exit_from_read(result: ReadResult) -> _ExitInfo:
    assert result.exit_code is not None
    return _ExitInfo(
        exit_code=result.exit_code,
        signal=result.signal,
        timed_out=result.timed_out,
        sandbox_denied=result.sandbox_denied,
        duration_ms=result.duration_ms,
        usage=result.usage,
        denials=result.denials,
        sandbox_denied_source=result.sandbox_denied_source,
        limit_exceeded=result.limit_exceeded,
    )
