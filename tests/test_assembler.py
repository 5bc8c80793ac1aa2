"""The terminal-record assembler as a state table: synchronous, no I/O (protocol doc §9)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from fake_server import ScriptedProcess, make_events

PID = "proc-1"
ARGV = ("sh", "-c", "x")

STANDARD = [("stdout", b"hello "), ("stderr", b"warn"), ("stdout", b"world"), ("exit", 3), ("close",)]


def new(**kwargs: Any) -> p.Assembler:
    return p.Assembler(PID, ARGV, **kwargs)


def feed(assembler: p.Assembler, events: Any, seqs: list[int]) -> list[p.Progress]:
    return [assembler.event(events[seq - 1]) for seq in seqs]


def answer(assembler: p.Assembler, server: ScriptedProcess, progress: p.Progress) -> p.Progress:
    """Answer NeedRead actions from the server model until the assembler stops asking."""
    while isinstance(progress.action, p.NeedRead):
        request = progress.action
        progress = assembler.read_result(server.read(request.after_seq, request.max_bytes))
    return progress


def record_of(progress: p.Progress) -> p.TerminalRecord:
    assert isinstance(progress.action, p.Complete), progress.action
    return progress.action.record


def content(record: p.TerminalRecord) -> p.TerminalRecord:
    """The record without the how-it-arrived fields."""
    return attrs.evolve(record, completion=p.Completion.PUSHED, read_calls=0)


# --- the table ------------------------------------------------------------------------------


def test_in_order_completes_with_zero_reads_and_pushed() -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    assert assembler.begin().action == p.Wait(hole=False)
    progresses = feed(assembler, events, [1, 2, 3, 4, 5])
    assert [c.chunk for prog in progresses for c in prog.chunks] == [b"hello ", b"warn", b"world"]
    assert all(isinstance(prog.action, p.Wait) for prog in progresses[:-1])
    record = record_of(progresses[-1])
    assert record == p.TerminalRecord(
        process_id=PID,
        argv=ARGV,
        exit_code=3,
        signal=None,
        timed_out=False,
        sandbox_denied=False,
        stdout=b"hello world",
        stderr=b"warn",
        stdout_omitted_bytes=0,
        stderr_omitted_bytes=0,
        output_lost=False,
        stdout_lost_bytes=0,
        stderr_lost_bytes=0,
        duration_ms=5.0,
        usage=p.Usage(user_cpu_ms=1.0, system_cpu_ms=2.0, max_rss_kb=3000),
        completion=p.Completion.PUSHED,
        read_calls=0,
        failure=None,
        denials=(),
        sandbox_denied_source="audit",
    )
    assert assembler.state is p.AssemblerState.COMPLETE


def test_states_along_a_gap_repair() -> None:
    events = make_events(PID, STANDARD)
    server = ScriptedProcess(events)
    assembler = new()
    assembler.event(events[0])
    assert assembler.state is p.AssemblerState.RECEIVING
    held = assembler.event(events[2])  # seq 2 was dropped by the server
    assert held.action == p.Wait(hole=True) and held.chunks == ()
    assert assembler.state is p.AssemblerState.HOLDING
    read = assembler.gap_grace_expired()
    assert read.action == p.NeedRead(after_seq=1, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    assert assembler.state is p.AssemblerState.READING
    # While the read is outstanding nothing else is asked for.
    assert assembler.gap_grace_expired().action == p.Wait(hole=False)
    assert assembler.event(events[3]).action == p.Wait(hole=False)
    done = assembler.read_result(server.read(1, p.READ_MAX_BYTES))
    assert [c.seq for c in done.chunks] == [2, 3]
    record = record_of(done)
    assert (record.completion, record.read_calls, record.stdout, record.stderr) == (
        p.Completion.RECOVERED,
        1,
        b"hello world",
        b"warn",
    )
    assert record.exit_code == 3


def test_gap_filled_in_time_needs_no_read() -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    assembler.event(events[1])
    assert assembler.state is p.AssemblerState.HOLDING
    filled = assembler.event(events[0])
    assert [c.seq for c in filled.chunks] == [1, 2]
    assert assembler.state is p.AssemblerState.RECEIVING
    # A grace timer that fires late, after the hole was filled, is harmless.
    assert assembler.gap_grace_expired().action == p.Wait(hole=False)
    record = record_of(feed(assembler, events, [3, 4, 5])[-1])
    assert (record.completion, record.read_calls) == (p.Completion.PUSHED, 0)


@pytest.mark.parametrize(
    "order",
    [[2, 1, 3, 4, 5], [3, 2, 1, 4, 5], [1, 4, 3, 2, 5], [4, 3, 2, 1, 5]],
)
def test_reordering_is_held_without_reads(order: list[int]) -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    progresses = feed(assembler, events, order)
    assert [c.seq for prog in progresses for c in prog.chunks] == [1, 2, 3]
    record = record_of(progresses[-1])
    assert (record.completion, record.read_calls, record.stdout) == (p.Completion.PUSHED, 0, b"hello world")


def test_duplicates_are_ignored() -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    progresses = feed(assembler, events, [1, 1, 3, 3, 2, 1, 2, 4, 4, 3, 5])
    assert [c.seq for prog in progresses for c in prog.chunks] == [1, 2, 3]
    record = record_of(progresses[-1])
    assert (record.stdout, record.stderr, record.read_calls) == (b"hello world", b"warn", 0)
    # After completion, stray duplicates change nothing.
    assert assembler.event(events[0]).action == p.Complete(record)


def test_closed_behind_a_hole_reads_at_once() -> None:
    events = make_events(PID, STANDARD)
    server = ScriptedProcess(events)
    assembler = new()
    feed(assembler, events, [1, 2])
    progress = assembler.event(events[4])  # closed; seq 3 and 4 missing
    assert progress.action == p.NeedRead(after_seq=2, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    record = record_of(answer(assembler, server, progress))
    assert (record.completion, record.read_calls, record.exit_code, record.stdout) == (
        p.Completion.RECOVERED,
        1,
        3,
        b"hello world",
    )


def test_reorder_buffer_overflow_reads() -> None:
    spec = [("stdout", bytes([65 + i])) for i in range(6)] + [("exit", 0), ("close",)]
    events = make_events(PID, spec)
    server = ScriptedProcess(events)
    assembler = new(reorder_events=3)
    actions = [prog.action for prog in feed(assembler, events, [2, 3, 4])]
    assert actions == [p.Wait(hole=True)] * 3
    overflow = assembler.event(events[4])
    assert overflow.action == p.NeedRead(after_seq=0, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    record = record_of(answer(assembler, server, overflow))
    assert (record.stdout, record.read_calls, record.completion) == (b"ABCDEF", 1, p.Completion.RECOVERED)


def test_read_repeats_only_while_more_is_retained() -> None:
    spec = [("stdout", b"x" * 10) for _ in range(5)] + [("exit", 0), ("close",)]
    events = make_events(PID, spec)
    server = ScriptedProcess(events)
    assembler = new(read_max_bytes=25)
    first = assembler.event(events[6])  # only closed arrived
    assert first.action == p.NeedRead(after_seq=0, wait_ms=0, max_bytes=25)
    second = assembler.read_result(server.read(0, 25))  # seqs 1-2, more retained
    assert second.action == p.NeedRead(after_seq=2, wait_ms=0, max_bytes=25)
    third = assembler.read_result(server.read(2, 25))  # seqs 3-4
    assert third.action == p.NeedRead(after_seq=4, wait_ms=0, max_bytes=25)
    record = record_of(assembler.read_result(server.read(4, 25)))  # seq 5 + terminal state
    assert (record.stdout, record.read_calls, record.exit_code) == (b"x" * 50, 3, 0)


def test_an_unreadable_event_asks_for_a_read() -> None:
    events = make_events(PID, STANDARD)
    server = ScriptedProcess(events)
    assembler = new()
    feed(assembler, events, [1, 2, 3, 4])
    progress = assembler.event_unreadable()  # the closed event did not decode
    assert progress.action == p.NeedRead(after_seq=4, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    record = record_of(answer(assembler, server, progress))
    assert (record.read_calls, record.completion, record.exit_code) == (1, p.Completion.RECOVERED, 3)


def test_read_result_without_outstanding_read_is_an_error() -> None:
    assembler = new()
    server = ScriptedProcess(make_events(PID, STANDARD))
    with pytest.raises(p.AssemblerError, match="receiving"):
        assembler.read_result(server.read(0))


def test_legacy_server_long_polls_until_closed() -> None:
    events = make_events(PID, STANDARD, legacy=True)
    server = ScriptedProcess(events, legacy=True, produced=0)
    assembler = new(push_events=False)
    progress = assembler.begin()
    assert progress.action == p.NeedRead(after_seq=0, wait_ms=p.LONG_POLL_WAIT_MS, max_bytes=p.READ_MAX_BYTES)
    assert assembler.state is p.AssemblerState.POLLING
    chunks = []
    while isinstance(progress.action, p.NeedRead):
        server.produced = min(len(events), (server.produced or 0) + 2)  # the process makes progress
        progress = assembler.read_result(server.read(progress.action.after_seq, progress.action.max_bytes))
        chunks.extend(progress.chunks)
    record = record_of(progress)
    assert [c.seq for c in chunks] == [1, 2, 3]
    assert (record.completion, record.stdout, record.stderr, record.exit_code) == (
        p.Completion.POLLED,
        b"hello world",
        b"warn",
        3,
    )
    assert record.sandbox_denied is None  # the legacy server never said
    # reads see events 1-2, 1-4 (exited), 1-5: the last returns no chunks and closed
    assert record.read_calls == 3


@pytest.mark.parametrize("reveal", [1, 2, 3, 5])
def test_legacy_poll_yields_the_same_output_whatever_the_progress(reveal: int) -> None:
    events = make_events(PID, STANDARD, legacy=True)
    server = ScriptedProcess(events, legacy=True, produced=0)
    assembler = new(push_events=False, read_max_bytes=5)
    progress = assembler.begin()
    while isinstance(progress.action, p.NeedRead):
        server.produced = min(len(events), (server.produced or 0) + reveal)
        progress = assembler.read_result(server.read(progress.action.after_seq, progress.action.max_bytes))
    record = record_of(progress)
    assert (record.stdout, record.stderr, record.exit_code, record.completion) == (
        b"hello world",
        b"warn",
        3,
        p.Completion.POLLED,
    )


def test_legacy_exited_without_sandbox_denied_costs_exactly_one_read() -> None:
    events = make_events(PID, STANDARD, legacy=True)
    modern = ScriptedProcess(make_events(PID, STANDARD))  # the read knows sandboxDenied
    assembler = new()
    progresses = feed(assembler, events, [1, 2, 3, 4])
    assert all(prog.action == p.Wait(hole=False) for prog in progresses)
    compat = assembler.event(events[4])
    assert compat.action == p.NeedRead(after_seq=5, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    record = record_of(assembler.read_result(modern.read(5)))
    assert (record.read_calls, record.sandbox_denied, record.exit_code, record.completion) == (
        1,
        False,
        3,
        p.Completion.PUSHED,
    )


def test_legacy_exited_compat_read_that_still_does_not_know_completes() -> None:
    events = make_events(PID, STANDARD, legacy=True)
    legacy = ScriptedProcess(events, legacy=True)
    assembler = new()
    compat = feed(assembler, events, [1, 2, 3, 4, 5])[-1]
    assert isinstance(compat.action, p.NeedRead)
    record = record_of(assembler.read_result(legacy.read(5)))
    assert (record.read_calls, record.sandbox_denied, record.exit_code) == (1, None, 3)


def test_evicted_output_reports_exact_lost_bytes_and_keeps_the_rest() -> None:
    spec = [
        ("stdout", b"a" * 100),  # 1 held by the client
        ("stderr", b"b" * 7),  # 2 evicted
        ("stdout", b"c" * 50),  # 3 evicted
        ("stdout", b"d" * 30),  # 4 evicted, but the client holds it out of order
        ("stdout", b"e" * 20),  # 5 retained
        ("exit", 0),
        ("close",),
    ]
    events = make_events(PID, spec)
    server = ScriptedProcess(events, evicted_through=4)
    assembler = new()
    feed(assembler, events, [1, 4])
    progress = assembler.gap_grace_expired()
    record = record_of(answer(assembler, server, progress))
    assert record.output_lost is True
    assert (record.stdout_lost_bytes, record.stderr_lost_bytes) == (50, 7)
    assert record.stdout == b"a" * 100 + b"d" * 30 + b"e" * 20
    assert record.stderr == b""
    assert (record.completion, record.read_calls, record.exit_code) == (p.Completion.RECOVERED, 1, 0)


def test_eviction_of_bytes_the_client_already_holds_loses_nothing() -> None:
    events = make_events(PID, STANDARD)
    server = ScriptedProcess(events, evicted_through=2)
    assembler = new()
    feed(assembler, events, [1, 2])
    progress = assembler.event(events[4])  # closed: seqs 3, 4 missing
    record = record_of(answer(assembler, server, progress))
    assert (record.output_lost, record.stdout_lost_bytes, record.stderr_lost_bytes) == (False, 0, 0)
    assert record.stdout == b"hello world"


def test_stream_that_ends_without_closed_fails_without_exit_code() -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    feed(assembler, events, [1, 2])
    record = record_of(assembler.connection_lost("connection lost: could not resume"))
    assert record.failure == "connection lost: could not resume"
    assert record.exit_code is None and record.signal is None and record.sandbox_denied is None
    assert record.stdout == b"hello " and record.stderr == b"warn"


def test_lost_after_exited_keeps_the_real_exit_code() -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    feed(assembler, events, [1, 2, 3, 4])
    record = record_of(assembler.connection_lost("gone"))
    assert (record.exit_code, record.failure) == (3, "gone")


def test_read_failure_fails_the_record() -> None:
    events = make_events(PID, STANDARD)
    assembler = new()
    assembler.event(events[4])
    record = record_of(assembler.read_failed("-32001 unknown process"))
    assert record.failure == "-32001 unknown process" and record.exit_code is None
    assert record.read_calls == 1


def test_resume_reads_from_last_contiguous_seq() -> None:
    events = make_events(PID, STANDARD)
    server = ScriptedProcess(events)
    assembler = new()
    feed(assembler, events, [1, 2])
    progress = assembler.connection_resumed()
    assert progress.action == p.NeedRead(after_seq=2, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    record = record_of(answer(assembler, server, progress))
    assert (record.completion, record.read_calls, record.stdout) == (p.Completion.RECOVERED, 1, b"hello world")


def test_resume_abandons_an_outstanding_read() -> None:
    events = make_events(PID, STANDARD)
    server = ScriptedProcess(events)
    assembler = new()
    feed(assembler, events, [1, 5])
    assert assembler.state is p.AssemblerState.READING
    progress = assembler.connection_resumed()
    assert progress.action == p.NeedRead(after_seq=1, wait_ms=0, max_bytes=p.READ_MAX_BYTES)
    record = record_of(answer(assembler, server, progress))
    assert record.read_calls == 2 and record.stdout == b"hello world"


@pytest.mark.parametrize(
    ("cap", "data", "stdout", "omitted"),
    [
        (10, b"0123456789", b"0123456789", 0),
        (10, b"0123456789AB", b"01234789AB", 2),
        (11, b"abcdefghijklmnopqrstuvwxyz", b"abcdeuvwxyz", 15),
        (0, b"abc", b"", 3),
    ],
)
def test_output_past_the_cap_keeps_head_and_tail(cap: int, data: bytes, stdout: bytes, omitted: int) -> None:
    # Split the data into 3-byte chunks so the cap is crossed mid-chunk.
    spec: list[tuple[Any, ...]] = [("stdout", data[i : i + 3]) for i in range(0, len(data), 3)]
    events = make_events(PID, [*spec, ("stderr", b"e"), ("exit", 0), ("close",)])
    assembler = new(max_output_bytes=cap)
    record = record_of(feed(assembler, events, list(range(1, len(events) + 1)))[-1])
    assert (record.stdout, record.stdout_omitted_bytes) == (stdout, omitted)
    assert len(record.stdout) + record.stdout_omitted_bytes == len(data)
    assert record.output_lost is False


# --- the property: arrival order does not change the record -----------------------------------

output_item = st.tuples(st.sampled_from(["stdout", "stderr"]), st.binary(min_size=1, max_size=6))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], list[int], list[bool], list[bool]]:
    before = draw(st.lists(output_item, max_size=6))
    after = draw(st.lists(output_item, max_size=2))  # a grandchild writing after exited
    spec: list[tuple[Any, ...]] = [*before, ("exit", draw(st.integers(0, 255))), *after, ("close",)]
    count = len(spec)
    seqs = list(range(1, count + 1))
    order = draw(st.permutations(seqs))
    duplicates = draw(st.lists(st.sampled_from(seqs), max_size=4))
    arrival = list(order)
    for dup in duplicates:
        arrival.insert(draw(st.integers(0, len(arrival))), dup)
    answer_now = draw(st.lists(st.booleans(), min_size=len(arrival), max_size=len(arrival)))
    grace = draw(st.lists(st.booleans(), min_size=len(arrival), max_size=len(arrival)))
    return spec, arrival, answer_now, grace


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from([2, 256]), st.sampled_from([4, p.READ_MAX_BYTES]))
def test_any_arrival_order_yields_the_in_order_record(
    scenario: tuple[list[tuple[Any, ...]], list[int], list[bool], list[bool]], reorder_events: int, read_max: int
) -> None:
    spec, arrival, answer_now, grace = scenario
    events = make_events(PID, spec)
    server = ScriptedProcess(events)

    reference = new()
    expected = record_of(feed(reference, events, list(range(1, len(events) + 1)))[-1])

    assembler = new(reorder_events=reorder_events, read_max_bytes=read_max)
    pending: p.NeedRead | None = None
    emitted: list[int] = []
    progress = assembler.begin()

    def act(progress: p.Progress, now: bool) -> p.Progress:
        nonlocal pending
        emitted.extend(c.seq for c in progress.chunks)
        if isinstance(progress.action, p.NeedRead):
            assert pending is None, "two reads outstanding"
            pending = progress.action
        if now and pending is not None:
            request, pending = pending, None
            return act(assembler.read_result(server.read(request.after_seq, request.max_bytes)), now)
        return progress

    for index, seq in enumerate(arrival):
        progress = act(assembler.event(events[seq - 1]), answer_now[index])
        if grace[index] and isinstance(progress.action, p.Wait) and progress.action.hole:
            progress = act(assembler.gap_grace_expired(), answer_now[index])
    progress = act(p.Progress((), progress.action), True)
    if not isinstance(progress.action, p.Complete):
        progress = act(assembler.gap_grace_expired(), True)
    record = record_of(progress)

    assert content(record) == content(expected)
    assert emitted == sorted(set(emitted)), "chunks are yielded once, in seq order"
    output_seqs = [e.seq for e in events if isinstance(e, p.OutputEvent)]
    assert emitted == output_seqs
    closed_last_new = arrival.index(len(events)) == max(arrival.index(s) for s in set(arrival))
    if closed_last_new and not any(grace) and reorder_events == 256:
        assert (record.read_calls, record.completion) == (0, p.Completion.PUSHED)
    if record.read_calls == 0:
        assert record.completion is p.Completion.PUSHED


@st.composite
def lossy_scenarios(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], list[int], int]:
    before = draw(st.lists(output_item, min_size=1, max_size=8))
    after = draw(st.lists(output_item, max_size=2))
    spec: list[tuple[Any, ...]] = [*before, ("exit", draw(st.integers(0, 255))), *after, ("close",)]
    seqs = list(range(1, len(spec) + 1))
    must = [seq for seq, item in zip(seqs, spec, strict=True) if item[0] in ("exit", "close")]
    # bestEffort drops any output event; exited and closed are must-deliver.
    delivered = draw(st.lists(st.sampled_from(seqs), unique=True).map(lambda kept: sorted(set(kept) | set(must))))
    arrival = draw(st.permutations(delivered))
    evicted_through = draw(st.integers(0, len(spec)))
    return spec, list(arrival), evicted_through


@settings(max_examples=300, deadline=None)
@given(lossy_scenarios())
def test_dropped_and_evicted_output_is_kept_exactly_or_counted(scenario: tuple[list[tuple[Any, ...]], list[int], int]) -> None:
    spec, arrival, evicted_through = scenario
    events = make_events(PID, spec)
    server = ScriptedProcess(events, evicted_through=evicted_through)
    assembler = new(reorder_events=4)
    progress = assembler.begin()
    seen: set[int] = set()  # delivered before the record completed
    for seq in arrival:
        if isinstance(progress.action, p.Complete):
            break
        seen.add(seq)
        progress = answer(assembler, server, assembler.event(events[seq - 1]))
        if isinstance(progress.action, p.Wait) and progress.action.hole:
            progress = answer(assembler, server, assembler.gap_grace_expired())
    record = record_of(progress)

    assert record.exit_code == spec[[item[0] for item in spec].index("exit")][1]
    assert record.failure is None
    for stream, kept, lost in (
        (p.Stream.STDOUT, record.stdout, record.stdout_lost_bytes),
        (p.Stream.STDERR, record.stderr, record.stderr_lost_bytes),
    ):
        chunks = [e for e in events if isinstance(e, p.OutputEvent) and e.stream is stream]
        assert lost is not None
        assert len(kept) + lost == sum(len(e.chunk) for e in chunks)
        # What is kept is exact: every retained chunk plus some evicted ones, in seq order.
        held = [e for e in chunks if e.seq > evicted_through or e.seq in seen]
        assert kept == b"".join(e.chunk for e in held)
    assert record.output_lost == bool(record.stdout_lost_bytes or record.stderr_lost_bytes)
    assert (record.read_calls == 0) == (record.completion is p.Completion.PUSHED)
