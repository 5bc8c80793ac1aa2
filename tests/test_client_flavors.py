"""One behavioural suite, run against all three clients: trio, asyncio and sync (``client_flavors``).

Real server on a loopback port; every test is parametrized over the flavor, so the same
assertions hold for ``open_client`` on trio, ``open_client`` on asyncio, and ``connect``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
import trio

import exec_client
import protocol as p
from client_flavors import FLAVORS, Flavor
from test_delivery_support import StallProxy
from nspid import descendant_running

# How long a terminated process may take to disappear from the host.
GONE_WITHIN_S = 10.0


@pytest.fixture(params=sorted(FLAVORS))
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return FLAVORS[request.param]


async def wait_gone(pid: int) -> None:
    """Until ``pid`` no longer exists (bounded by the test's guard)."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await trio.sleep(0.02)


async def pid_from(path: Path) -> int:
    while not path.exists() or not path.read_text().endswith("\n"):
        await trio.sleep(0.02)
    return int(path.read_text())


async def test_run_gives_the_pushed_record(flavor: Flavor, server: Any) -> None:
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            record = await client.run(["sh", "-c", "echo hi; echo oops >&2; exit 3"])
            shell = await client.run("echo $((6 * 7))")  # a str runs through sh -c
    assert (record.exit_code, record.stdout, record.stderr) == (3, b"hi\n", b"oops\n")
    assert (record.completion, record.read_calls, record.failure) == (p.Completion.PUSHED, 0, None)
    assert str(record.completion) == "pushed" and f"{record.completion}" == "pushed"
    assert (shell.exit_code, shell.stdout, shell.argv) == (0, b"42\n", ("sh", "-c", "echo $((6 * 7))"))


async def test_start_and_stream_chunks_and_lines(flavor: Flavor, server: Any) -> None:
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            handle = await client.start(["sh", "-c", "printf first; read go; printf 'second\\nthird\\n'"], pipe_stdin=True)
            first = await handle.next_chunk()
            assert first is not None and first.chunk == b"first"  # arrived before the process ended
            await handle.write("go\n")
            await handle.close_stdin()
            rest = []
            while (chunk := await handle.next_chunk()) is not None:
                rest.append(chunk.chunk)
            record = await handle.wait()
            lined = await client.start(["printf", "a\\nb\\nc"])
            lines = await lined.lines()
    assert b"".join(rest) == b"second\nthird\n" and record.stdout == b"firstsecond\nthird\n"
    assert lines == ["a", "b", "c"]


async def test_output_callbacks_see_every_chunk_in_order(flavor: Flavor, server: Any) -> None:
    out: list[bytes] = []
    err: list[bytes] = []
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            record = await client.run(
                ["sh", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done"],
                on_stdout=out.append,
                on_stderr=err.append,
            )
    assert b"".join(out) == record.stdout == b"out1\nout2\nout3\n"
    assert b"".join(err) == record.stderr == b"err1\nerr2\nerr3\n"


async def test_stdin_as_bytes_str_and_file_and_bad_types_start_nothing(flavor: Flavor, server: Any) -> None:
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            as_bytes = await client.run(["cat"], stdin=b"\x00\xffbytes")
            as_str = await client.run(["cat"], stdin="h\u00e9llo")
            as_file = await client.run(["cat"], stdin=io.BytesIO(b"from a file" * 1000))
            for bad in (12, ["list"], object()):
                with pytest.raises(TypeError, match="stdin must be"):
                    await client.run(["cat", "refused"], stdin=bad)
            with pytest.raises(TypeError, match="sh -c"):
                await client.run("echo refused", shell=False)
            listed = await client.list()
    assert as_bytes.stdout == b"\x00\xffbytes"
    assert as_str.stdout == "h\u00e9llo".encode()
    assert as_file.stdout == b"from a file" * 1000
    # None of the refused calls started anything (the three runs may still be releasing).
    assert [entry.argv for entry in listed if "refused" in " ".join(entry.argv)] == []


async def test_check_raises_command_failed_with_the_record(flavor: Flavor, server: Any) -> None:
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            ok = await client.run(["true"], check=True)
            with pytest.raises(exec_client.CommandFailed, match="exited with 4") as caught:
                await client.run(["sh", "-c", "echo partial; exit 4"], check=True)
            with pytest.raises(exec_client.CommandFailed, match="timed out"):
                await client.run(["sleep", "30"], check=True, timeout=0.2)
    assert ok.exit_code == 0
    assert (caught.value.record.exit_code, caught.value.record.stdout) == (4, b"partial\n")


async def test_cancel_kills_the_remote_process(flavor: Flavor, server: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            async with trio.open_nursery() as nursery:
                # A distinct sleep, found from the host: the $$ a command prints is a pid of
                # its own PID namespace.
                sleep = ("sleep", f"30.{os.getpid()}{sum(map(ord, flavor.name))}")
                nursery.start_soon(client.cancelled_run, ["sh", "-c", f"echo $$ > {pid_file}; exec {' '.join(sleep)}"], 1.0)
                await pid_from(pid_file)
                while (found := descendant_running(*sleep)) is None:
                    await trio.sleep(0.02)
                pid = found
            with trio.fail_after(GONE_WITHIN_S):
                await wait_gone(pid)


async def test_timeout_kills_the_tree_and_says_so(flavor: Flavor, server: Any) -> None:
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as client:
            record = await client.run(["sh", "-c", "echo before; exec sleep 30"], timeout=0.3)
    assert record.timed_out is True and record.stdout == b"before\n"
    assert (record.exit_code, record.signal) in ((128 + 9, "SIGKILL"), (128 + 15, "SIGTERM"))


async def test_resume_after_a_cut_completes_the_record(flavor: Flavor, server: Any, nursery: trio.Nursery) -> None:
    target_port = int(server.url.rsplit(":", 1)[1])
    proxy = await nursery.start(StallProxy(target_port).serve)
    resumes: list[str] = []
    with trio.fail_after(30):
        async with flavor.open(f"ws://127.0.0.1:{proxy.port}", server.token, on_resume=resumes.append) as client:
            handle = await client.start(["sh", "-c", "printf first; read go; printf second"], pipe_stdin=True)
            first = await handle.next_chunk()
            assert first is not None and first.chunk == b"first"
            proxy.cut()
            await handle.write(b"go\n")  # retried on the resumed session
            await handle.close_stdin()
            record = await handle.wait()
            assert client.resumes == 1
    assert (record.stdout, record.exit_code, record.failure) == (b"firstsecond", 0, None)
    assert proxy.accepted == 2
    assert "resuming" in resumes[0] and "resumed" in resumes[-1]


async def test_attach_from_a_new_client_of_the_same_session(flavor: Flavor, server: Any) -> None:
    with trio.fail_after(30):
        async with flavor.open(server.url, server.token) as first:
            started = await first.start(["sh", "-c", "printf early; read line; echo late $line"], pipe_stdin=True)
            early = await started.next_chunk()
            assert early is not None and early.chunk == b"early"
            # A second client takes the session over (the first is closed with 4001).
            async with flavor.open(server.url, server.token, session_id=first.session_id) as second:
                listed = await second.list()
                assert [(entry.process_id, entry.session_id) for entry in listed] == [
                    (started.process_id, first.session_id)
                ]
                attached = await second.attach(started.process_id)
                await attached.write(b"now\n")
                await attached.close_stdin()
                record = await attached.wait()
            old = await started.wait()
    assert (record.stdout, record.exit_code, record.failure) == (b"earlylate now\n", 0, None)
    assert old.failure is not None and "taken over" in old.failure


def test_the_sync_client_takes_the_async_clients_arguments() -> None:
    import inspect

    for name in ("run", "start", "attach", "list", "list_processes", "detach"):
        async_params = inspect.signature(getattr(exec_client.Client, name)).parameters
        sync_params = inspect.signature(getattr(exec_client.SyncClient, name)).parameters
        assert [(p.name, p.kind, p.default) for p in async_params.values()] == [
            (p.name, p.kind, p.default) for p in sync_params.values()
        ], name
