"""exec_client against the scripted fake server: ordering, repair, legacy, resume, errors.

The fake speaks over a real loopback WebSocket; what it pushes, and in which order, is
scripted per test. Each test asserts the record and exactly which reads the client made.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import exec_client
import exec_client._handle
import protocol as p
from exec_client import open_client
from fake_server import FAKE_TOKEN, FakeProcessScript, FakeServer, ScriptedProcess, make_events

STANDARD = [("stdout", b"hello "), ("stderr", b"warn"), ("stdout", b"world"), ("exit", 3), ("close",)]
# A grace longer than any test: a read can then only come from the rules, never the timer.
NO_TIMER = 60.0

ServeFake = Callable[..., Awaitable[FakeServer]]


@pytest.fixture
async def serve_fake(nursery: trio.Nursery) -> ServeFake:
    async def serve(*scripts: FakeProcessScript, **kwargs: Any) -> FakeServer:
        fake = FakeServer(list(scripts), **kwargs)
        await nursery.start(fake.serve)
        return fake

    return serve


def script(spec: list[tuple[Any, ...]] = STANDARD, push: list[Any] | None = None, **kwargs: Any) -> FakeProcessScript:
    legacy = kwargs.pop("legacy", False)
    evicted_through = kwargs.pop("evicted_through", 0)
    events = make_events("scripted", spec, legacy=legacy)
    process = ScriptedProcess(events, legacy=legacy, evicted_through=evicted_through)
    return FakeProcessScript(process, push=push if push is not None else list(range(1, len(events) + 1)), **kwargs)


def assert_standard_output(record: p.TerminalRecord) -> None:
    assert (record.stdout, record.stderr, record.exit_code, record.failure) == (b"hello world", b"warn", 3, None)


async def test_in_order_push_needs_no_read_and_releases(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script())
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert (record.completion, record.read_calls, fake.reads()) == (p.Completion.PUSHED, 0, [])
        assert ("process/release", {"processId": record.process_id}) in fake.requests


async def test_reordered_and_duplicated_frames_give_the_exact_record_without_reads(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[2, 1, 1, 3, 2, 4, 3, 1, 4, 5]))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert record.sandbox_denied is False and record.duration_ms == 5.0
        assert (record.completion, record.read_calls, fake.reads()) == (p.Completion.PUSHED, 0, [])


async def test_streaming_handle_yields_chunks_in_seq_order(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[3, 2, 1, 4, 5]))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            handle = await client.start(["prog"])
            chunks = [chunk async for chunk in handle]
            record = await handle.wait()
        assert [(c.seq, c.stream, c.chunk) for c in chunks] == [
            (1, p.Stream.STDOUT, b"hello "),
            (2, p.Stream.STDERR, b"warn"),
            (3, p.Stream.STDOUT, b"world"),
        ]
        assert_standard_output(record)
        assert handle.pid == 4242


async def test_an_unconsumed_stream_overruns_but_the_record_stays_exact(
    serve_fake: ServeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exec_client._handle, "STREAM_BUFFER_BYTES", 8)
    with trio.fail_after(10):
        fake = await serve_fake(script())
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            handle = await client.start(["prog"])
            record = await handle.wait()  # nobody iterated meanwhile
            with pytest.raises(exec_client.OutputOverrun):
                [chunk async for chunk in handle]
        assert_standard_output(record)


async def test_a_dropped_event_is_repaired_by_one_read_after_the_grace(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        # Seq 2 never comes; nothing else follows until the client has read.
        fake = await serve_fake(script(push=[1, 3, ("await_read",), 4, 5]))
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert (record.completion, record.read_calls) == (p.Completion.RECOVERED, 1)
        assert [(r["afterSeq"], r["waitMs"]) for r in fake.reads()] == [(1, 0)]
        assert fake.reads()[0]["maxBytes"] == p.READ_MAX_BYTES


async def test_closed_behind_a_hole_reads_at_once(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, 2, 5]))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert (record.completion, record.read_calls) == (p.Completion.RECOVERED, 1)
        assert [r["afterSeq"] for r in fake.reads()] == [2]


async def test_an_undecodable_closed_event_is_repaired_by_a_read(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, 2, 3, 4, ("garble", 5)]))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert (record.completion, record.read_calls) == (p.Completion.RECOVERED, 1)
        assert [r["afterSeq"] for r in fake.reads()] == [4]


async def test_evicted_output_is_reported_exactly(serve_fake: ServeFake) -> None:
    spec = [("stdout", b"a" * 10), ("stdout", b"b" * 20), ("stderr", b"c" * 5), ("stdout", b"d"), ("exit", 0), ("close",)]
    with trio.fail_after(10):
        fake = await serve_fake(script(spec, push=[1, 6], evicted_through=3))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
        assert (record.output_lost, record.stdout_lost_bytes, record.stderr_lost_bytes) == (True, 20, 5)
        assert record.stdout == b"a" * 10 + b"d"
        assert (record.exit_code, record.completion, record.read_calls) == (0, p.Completion.RECOVERED, 1)


async def test_legacy_server_is_long_polled(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(legacy=True, push=[]), push_events=False)
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            assert client.info.push_events is False
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert record.completion is p.Completion.POLLED
        assert record.sandbox_denied is None  # a legacy server never says
        reads = fake.reads()
        assert record.read_calls == len(reads) == 3
        assert reads[0]["afterSeq"] == 0 and reads[0]["waitMs"] == p.LONG_POLL_WAIT_MS


async def test_legacy_exited_without_sandbox_denied_costs_exactly_one_read(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(strip_sandbox_denied=True))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
        assert_standard_output(record)
        assert (record.read_calls, len(fake.reads()), record.sandbox_denied) == (1, 1, False)
        assert fake.reads()[0]["afterSeq"] == 5


async def test_drop_then_resume_completes_the_exact_record(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, 2, "drop", 4, 5]))
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
            assert client.resumes == 1
        assert_standard_output(record)
        assert (record.completion, record.read_calls) == (p.Completion.RECOVERED, 1)
        assert fake.connections == 2
        assert [r["afterSeq"] for r in fake.reads()] == [2]
        resume = [params for method, params in fake.requests if method == "initialize"][1]
        assert resume["resumeSessionId"] == "fake-session"


async def test_resume_retries_with_backoff_until_the_server_answers(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, "drop", 2, 3, 4, 5]), refuse_reconnects=3)
        async with open_client(fake.url, token=FAKE_TOKEN, gap_grace=NO_TIMER) as client:
            record = await client.run(["prog"])
            assert client.resumes == 1
        assert_standard_output(record)
        assert fake.refuse_reconnects == 0 and fake.connections == 2


async def test_drop_without_closed_and_no_session_fails_without_an_exit_code(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, 2, "drop"]), allow_resume=False)
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            assert client.state is exec_client.ClientState.CONNECTED
            record = await client.run(["prog"])
            assert client.state is exec_client.ClientState.LOST
            with pytest.raises(exec_client.ConnectionLost):
                await client.run(["again"])
        assert record.failure is not None and "no longer has the session" in record.failure
        assert (record.exit_code, record.signal, record.sandbox_denied) == (None, None, None)
        assert (record.stdout, record.stderr) == (b"hello ", b"warn")


async def test_drop_after_exited_keeps_the_real_exit_code(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, 2, 3, 4, "drop"]), allow_resume=False)
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            record = await client.run(["prog"])
        assert record.failure is not None
        assert record.exit_code == 3


async def test_resume_gives_up_within_the_session_ttl(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1, "drop"]), max_connections=1, detached_session_ttl_ms=300)
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            record = await client.run(["prog"])
        assert record.failure is not None and "could not resume" in record.failure
        assert record.exit_code is None and record.stdout == b"hello "


async def test_wrong_token_raises_connection_failed(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake()
        with pytest.raises(exec_client.ConnectionFailed, match="authentication failed.*401"):
            async with open_client(fake.url, token="wrong"):
                pass  # pragma: no cover


async def test_unreachable_server_raises_connection_failed() -> None:
    with trio.fail_after(10):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()  # nothing listens there now
        with pytest.raises(exec_client.ConnectionFailed, match="connection refused"):
            async with open_client(f"ws://127.0.0.1:{port}", token=FAKE_TOKEN):
                pass  # pragma: no cover


async def test_server_errors_raise_their_subclass(serve_fake: ServeFake) -> None:
    error = {"code": -32007, "message": "spawn failed", "data": {"errno": "ENOENT", "strerror": "No such file"}}
    with trio.fail_after(10):
        fake = await serve_fake(script(start_error=error))
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            with pytest.raises(exec_client.SpawnFailed) as caught:
                await client.run(["missing"])
        assert (caught.value.code, caught.value.errno, caught.value.strerror) == (-32007, 2, "No such file")
        assert isinstance(caught.value, exec_client.ServerError)


async def test_exceptions_in_the_body_propagate_unwrapped(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake()
        with pytest.raises(KeyError):
            async with open_client(fake.url, token=FAKE_TOKEN):
                raise KeyError("mine")


async def test_cancelled_run_terminates_the_process(serve_fake: ServeFake) -> None:
    with trio.fail_after(10):
        fake = await serve_fake(script(push=[1]))  # never exits on its own
        async with open_client(fake.url, token=FAKE_TOKEN) as client:
            with trio.move_on_after(0.2):
                await client.run(["sleep", "forever"])
            assert [method for method, _params in fake.requests][-1] == "process/terminate"


def test_process_ids_are_unique_and_valid() -> None:
    ids = {exec_client.new_process_id() for _ in range(1000)}
    assert len(ids) == 1000
    for process_id in ids:
        p.ReadParams(process_id=process_id)  # the validator accepts it


def test_binary_output_frames_decode_like_json_events() -> None:
    event = p.OutputEvent(process_id="x", seq=7, stream=p.Stream.STDERR, chunk=b"\x00\xff")
    assert exec_client.decode_frame(p.encode_binary_output(event)) == p.Notification("process/output", event)
    assert exec_client.decode_frame(p.encode_notification(event)) == p.Notification("process/output", event)
