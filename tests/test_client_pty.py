"""The client's side of ``tty: true``: ``start(tty=True, size=...)``, ``handle.resize``, the
record of a pty process, and a clear refusal by a server that has no PTYs.

Against the real server on loopback (trio, asyncio and the sync facade); the server
without PTYs is the scripted fake (the real one has them), and the assembler's handling of
stream ``"pty"`` is checked sans-io.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trio

import exec_client
import protocol as p
from rawclient import no_leftover_processes  # noqa: F401  (a fixture)
from fake_server import FAKE_TOKEN, FakeProcessScript, FakeServer, ScriptedProcess, make_events
from test_cli import exec_client as run_exec_client
from test_cli import one_line

# A pty's line discipline echoes what is written and ends lines in "\r\n"; the commands
# below read nothing, so their output is exactly what they print.
SIZE_SCRIPT = "stty size; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo ttys; echo err >&2"


def _pty_event(seq: int, chunk: bytes) -> p.OutputEvent:
    return p.OutputEvent(process_id="x", seq=seq, stream=p.Stream.PTY, chunk=chunk)


def test_assembler_keeps_pty_output_as_the_records_stdout() -> None:
    assembler = p.Assembler("x", ("sh",), push_events=True)
    assembler.begin()
    # Out of order: seq 2 is held until seq 1 arrives, as for pipes.
    assert assembler.event(_pty_event(2, b"world\r\n")).chunks == ()
    progress = assembler.event(_pty_event(1, b"hello "))
    assert [(c.seq, c.stream, c.chunk) for c in progress.chunks] == [
        (1, p.Stream.PTY, b"hello "),
        (2, p.Stream.PTY, b"world\r\n"),
    ]
    exited = p.ExitedEvent(process_id="x", seq=3, exit_code=0, signal=None, timed_out=False, sandbox_denied=False)
    assembler.event(exited)
    done = assembler.event(p.ClosedEvent(process_id="x", seq=4))
    assert isinstance(done.action, p.Complete)
    record = done.action.record
    assert (record.stdout, record.stderr, record.output_lost) == (b"hello world\r\n", b"", False)


def test_assembler_counts_evicted_pty_output_as_stdout() -> None:
    assembler = p.Assembler("x", ("sh",), push_events=True)
    assembler.begin()
    assembler.event(_pty_event(3, b"tail"))  # 1 and 2 are missing
    progress = assembler.gap_grace_expired()
    assert isinstance(progress.action, p.NeedRead)
    result = p.ReadResult(
        chunks=(p.OutputChunk(seq=3, stream=p.Stream.PTY, chunk=b"tail"),),
        next_seq=6,
        exited=True,
        closed=True,
        exit_code=0,
        retained_from_seq=3,
        sandbox_denied=False,
        last_seq=5,
        evicted_bytes=p.StreamBytes(pty=10),
    )
    done = assembler.read_result(result)
    assert isinstance(done.action, p.Complete)
    record = done.action.record
    assert (record.stdout, record.output_lost, record.stdout_lost_bytes, record.stderr_lost_bytes) == (
        b"tail",
        True,
        10,
        0,
    )


async def test_a_server_without_ptys_refuses_tty_before_anything_starts(nursery: trio.Nursery) -> None:
    fake = FakeServer([FakeProcessScript(ScriptedProcess(make_events("x", [("exit", 0), ("close",)])))])
    await nursery.start(fake.serve)
    with trio.fail_after(30):
        async with exec_client.open_client(fake.url, token=FAKE_TOKEN) as client:
            assert client.info.pty is False
            with pytest.raises(exec_client.PtyUnsupported, match="has no pseudo-terminals"):
                await client.start(["sh"], tty=True)
            with pytest.raises(exec_client.PtyUnsupported):
                await client.run(["sh"], tty=True, size=(24, 80))
    assert [method for method, _ in fake.requests] == ["initialize"]


async def test_the_cli_says_so_in_one_line(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = FakeServer([])
    await nursery.start(fake.serve)
    with trio.fail_after(30):
        done = await run_exec_client(
            ["run", "-tt", "--url", fake.url, "--", "sh"], env={"EXEC_SERVER_TOKEN": FAKE_TOKEN}, home=tmp_path
        )
    assert done.returncode == 255
    assert "has no pseudo-terminals" in one_line(done.stderr)
    assert [method for method, _ in fake.requests] == ["initialize"]


async def test_bad_sizes_are_refused_before_anything_starts(server: Any) -> None:
    with trio.fail_after(30):
        async with exec_client.open_client(server.url, token=server.token) as client:
            with pytest.raises(ValueError, match="needs tty=True"):
                await client.start(["true"], size=(24, 80))
            with pytest.raises(ValueError, match="1..10000"):
                await client.start(["true"], tty=True, size=(0, 80))
            with pytest.raises(TypeError, match="rows, cols"):
                await client.start(["true"], tty=True, size=(24,))  # type: ignore[arg-type]
            assert await client.list_processes() == ()


async def test_usage_errors_of_dash_t(tmp_path: Path) -> None:
    with trio.fail_after(30):
        json_mode = await run_exec_client(["run", "-tt", "--json", "--", "true"], home=tmp_path)
        no_terminal = await run_exec_client(["run", "-t", "--", "true"], home=tmp_path)
    assert json_mode.returncode == no_terminal.returncode == 2
    assert "-t does not combine with --json" in one_line(json_mode.stderr)
    assert "-t needs a terminal on stdin" in one_line(no_terminal.stderr)


# --- against the real server (it has PTYs) ------------------------------------------------------


def _needs_ptys(client: Any) -> None:
    if not client.info.pty:
        pytest.fail("the server does not offer capabilities.pty")


async def test_trio_start_tty_with_a_size_and_resize(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with exec_client.open_client(server.url, token=server.token) as client:
            _needs_ptys(client)
            record = await client.run(["sh", "-c", SIZE_SCRIPT], tty=True, size=(30, 100))
            assert (record.exit_code, record.stdout, record.stderr) == (0, b"30 100\r\nttys\r\nerr\r\n", b"")

            handle = await client.start(["sh", "-c", "read line; stty size"], tty=True, size=(24, 80))
            await handle.resize(40, 132)
            await handle.write(b"go\n")
            lines = [line async for line in handle.lines()]
            assert lines == ["go", "40 132"]  # the echo of what we typed, then the answer
            assert (await handle.wait()).stdout == b"go\r\n40 132\r\n"

            piped = await client.start(["true"])
            await piped.wait()
            with pytest.raises(exec_client.ServerError):
                await piped.resize(10, 10)  # no terminal: the server says so


async def test_chunks_of_a_tty_process_are_stream_pty(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with exec_client.open_client(server.url, token=server.token) as client:
            _needs_ptys(client)
            seen: list[bytes] = []
            handle = await client.start(["sh", "-c", "echo out; echo err >&2"], tty=True, on_stdout=seen.append)
            chunks = [chunk async for chunk in handle]
            record = await handle.wait()
    assert {chunk.stream for chunk in chunks} == {p.Stream.PTY}
    assert b"".join(chunk.chunk for chunk in chunks) == b"".join(seen) == record.stdout == b"out\r\nerr\r\n"


async def test_close_stdin_sends_the_terminals_eof(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with exec_client.open_client(server.url, token=server.token) as client:
            _needs_ptys(client)
            handle = await client.start(["sh", "-c", "cat; echo done"], tty=True)
            await handle.write("typed\n")
            await handle.close_stdin()
            record = await handle.wait()
    # The echo, cat's copy, then cat's EOF (Ctrl-D at the start of a line).
    assert (record.exit_code, record.stdout) == (0, b"typed\r\ntyped\r\ndone\r\n")


def _asyncio_session(url: str, token: str) -> tuple[bytes, bytes]:
    async def main() -> tuple[bytes, bytes]:
        async with exec_client.open_client(url, token=token) as client:
            first = await client.run(["stty", "size"], tty=True, size=(12, 34))
            handle = await client.start(["sh", "-c", "read line; stty size"], tty=True)
            await handle.resize(56, 78)
            await handle.write(b"\n")
            return first.stdout, (await handle.wait()).stdout

    return asyncio.run(main())


async def test_asyncio_start_tty_and_resize(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        first, second = await trio.to_thread.run_sync(_asyncio_session, server.url, server.token)
    assert (first, second) == (b"12 34\r\n", b"\r\n56 78\r\n")


def _sync_session(url: str, token: str) -> tuple[bytes, bytes]:
    with exec_client.connect(url, token=token) as client:
        first = client.run(["stty", "size"], tty=True, size=(21, 43))
        handle = client.start(["sh", "-c", "read line; stty size"], tty=True, size=(5, 6))
        handle.resize(65, 87)
        handle.write(b"\n")
        return first.stdout, handle.wait().stdout


async def test_sync_start_tty_and_resize(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        first, second = await trio.to_thread.run_sync(_sync_session, server.url, server.token)
    assert (first, second) == (b"21 43\r\n", b"\r\n65 87\r\n")

