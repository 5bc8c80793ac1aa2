"""The client's lifecycle against a real server process: shutdown (1001), keepalive, no spinning."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

import exec_client
import protocol as p
from exec_client import _core
from exec_client._lifecycle import IllegalTransition, Lifecycle
from test_cli import REPO
from test_delivery_support import StallProxy, subprocess_server, terminate_and_time

GRACE_S: Final = 1.0
# The CLI must be gone within the grace plus this (the bound).
EXIT_SLACK_S: Final = 2.0


@attrs.frozen
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    cpu_seconds: float
    ended_at: float


def _run_and_account(popen: subprocess.Popen[bytes]) -> Finished:
    """Wait for ``popen`` with wait4, so that its own CPU time is known exactly."""
    assert popen.stdout is not None and popen.stderr is not None
    stdout = popen.stdout.read()
    stderr = popen.stderr.read()
    _pid, status, usage = os.wait4(popen.pid, 0)
    ended = time.monotonic()
    popen.returncode = os.waitstatus_to_exitcode(status)
    popen.stdout.close()
    popen.stderr.close()
    return Finished(popen.returncode, stdout, stderr, usage.ru_utime + usage.ru_stime, ended)


def cli_popen(args: list[str], token: str, home: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXEC_SERVER_")}
    env.update(HOME=str(home), EXEC_SERVER_TOKEN=token)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "exec_client", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


async def test_server_sigterm_under_a_running_cli_ends_it_promptly_without_spinning(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", str(GRACE_S)) as server:
            marker = tmp_path / "started"
            popen = cli_popen(
                ["run", "--url", server.url, "--", "sh", "-c", f"touch {marker}; exec sleep 30"], server.token, tmp_path
            )
            finished: list[Finished] = []

            async def wait_cli() -> None:
                finished.append(await trio.to_thread.run_sync(_run_and_account, popen))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_cli)
                while not marker.exists():
                    await trio.sleep(0.02)
                sent = terminate_and_time(server)
        done = finished[0]
    elapsed = done.ended_at - sent
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") <= 1, stderr
    # The drain killed the sleep after the grace and reported it before 1001: the CLI
    # exits with that exit (SIGTERM/SIGKILL), or 255 with "server shut down".
    assert done.returncode in (128 + 15, 128 + 9, 255), stderr
    if done.returncode == 255:
        assert _core.SERVER_SHUT_DOWN in stderr
    assert elapsed <= GRACE_S + EXIT_SLACK_S, elapsed
    # Interpreter start-up and imports cost well under a second; a spin would use the
    # whole wall time of the wait on a core.
    assert done.cpu_seconds < 0.5 * (elapsed + 1.0), (done.cpu_seconds, elapsed)


async def test_a_1001_without_the_record_ends_it_with_server_shut_down(tmp_path: Path) -> None:
    """A second SIGTERM kills every tree and closes at once: the record still ends promptly."""
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", "30") as server:
            async with exec_client.open_client(server.url, token=server.token) as client:
                handle = await client.start(["sleep", "30"])
                await trio.sleep(0)  # the start is answered; the drain now waits on it
                terminate_and_time(server)
                # A second signal kills every tree at once and closes with 1001.
                await trio.sleep(0.3)
                terminate_and_time(server)
                record = await handle.wait()
            assert client.state is exec_client.ClientState.CLOSED
    # Either the kill's exit reached us before the 1001, or the record says why it ended.
    assert record.exit_code in (128 + 9, 128 + 15) or record.failure == _core.SERVER_SHUT_DOWN, record


def test_retry_backoff_is_bounded_and_never_zero() -> None:
    backoff = _core.Backoff(0.01, 0.5)
    delays = [backoff.next() for _ in range(12)]
    assert delays[0] == 0.01 and all(0 < d <= 0.5 for d in delays) and delays[-1] == 0.5
    backoff.reset()
    assert backoff.next() == 0.01


def test_close_codes_decide_resume_or_give_up() -> None:
    assert _core.after_close(1001, "x", resume=True, ttl_ms=30_000) == _core.GiveUp(_core.SERVER_SHUT_DOWN)
    assert isinstance(_core.after_close(4001, "x", resume=True, ttl_ms=30_000), _core.GiveUp)
    assert isinstance(_core.after_close(1006, "x", resume=False, ttl_ms=30_000), _core.GiveUp)
    assert isinstance(_core.after_close(None, "x", resume=True, ttl_ms=None), _core.GiveUp)
    resume = _core.after_close(1006, "x", resume=True, ttl_ms=10_000)
    assert isinstance(resume, _core.Resume) and 0 < resume.seconds < 10


def test_the_client_lifecycle_names_an_illegal_move() -> None:
    table = {exec_client.ClientState.CLOSED: frozenset[exec_client.ClientState]()}
    lifecycle = Lifecycle("client", exec_client.ClientState.CLOSED, table)
    with pytest.raises(IllegalTransition, match="CLOSED -> CONNECTED"):
        lifecycle.move(exec_client.ClientState.CONNECTED)



async def test_a_missing_pong_counts_as_a_cut_and_the_session_resumes(server: Any, nursery: trio.Nursery) -> None:
    target_port = int(server.url.rsplit(":", 1)[1])
    proxy = await nursery.start(StallProxy(target_port).serve)
    notes: list[str] = []
    interval, timeout = 0.2, 0.3
    async with exec_client.open_client(
        proxy.url, token=server.token, ping_interval=interval, ping_timeout=timeout, on_resume=notes.append
    ) as client:
        with trio.fail_after(20):
            handle = await client.start(["sh", "-c", "printf first; read go; printf second"], pipe_stdin=True)
            assert (await anext(aiter(handle))).chunk == b"first"
            proxy.stall()  # the server goes silent: no pong, no FIN
        with trio.fail_after(interval + timeout + 1.0):
            while client.state is not exec_client.ClientState.RESUMING:
                await trio.sleep(0.01)
        proxy.flow()
        with trio.fail_after(20):
            await handle.write(b"go\n")
            await handle.close_stdin()
            record = await handle.wait()
            assert client.resumes == 1
    assert (record.stdout, record.exit_code, record.failure) == (b"firstsecond", 0, None)
    assert "no pong" in notes[0] and "resumed" in notes[-1]


async def test_one_sync_client_serves_many_threads_at_once(server: Any) -> None:
    def program() -> list[p.TerminalRecord]:
        with exec_client.connect(server.url, token=server.token) as client:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                return list(pool.map(lambda n: client.run(["sh", "-c", f"echo {n}"]), range(32)))

    with trio.fail_after(30):
        records = await trio.to_thread.run_sync(program)
    assert [record.stdout for record in records] == [f"{n}\n".encode() for n in range(32)]


async def test_the_sync_client_works_from_the_worker_threads_of_a_running_asyncio_program(server: Any) -> None:
    async def program() -> list[bytes]:
        def blocking(n: int) -> bytes:
            with exec_client.connect(server.url, token=server.token) as client:
                return client.run(["echo", str(n)]).stdout

        return list(await asyncio.gather(*(asyncio.to_thread(blocking, n) for n in range(3))))

    with trio.fail_after(30):
        outputs = await trio.to_thread.run_sync(lambda: asyncio.run(program()))
    assert outputs == [b"0\n", b"1\n", b"2\n"]


# --- the sans-io core: synchronous round trips ----------------------------------------------


def test_the_request_tracker_correlates_answers_and_classifies_everything_else() -> None:
    tracker = _core.RequestTracker()
    first, frame = tracker.request(p.EmptyParams(), "process/list")
    assert first == 1 and '"method":"process/list"' in frame.replace(" ", "")
    second, _ = tracker.request(p.SignalParams(process_id="x", signal=p.SignalName.KILL))
    raw, _ = tracker.request(p.EmptyParams(), "process/list", raw=True)

    answered = tracker.receive('{"jsonrpc":"2.0","id":1,"result":{"processes":[]}}')
    assert answered == _core.Answer(1, result=p.ListResult(processes=()))
    refused = tracker.receive('{"jsonrpc":"2.0","id":2,"error":{"code":-32001,"message":"unknown process"}}')
    assert isinstance(refused, _core.Answer) and isinstance(refused.error, exec_client.UnknownProcess)
    assert tracker.receive('{"jsonrpc":"2.0","id":3,"result":{"any":1}}') == _core.Answer(raw, result={"any": 1})
    assert tracker.outstanding == 0
    # A late answer (its caller gave up) is ignored; a call the client does not know
    # names no process, so there is nothing to repair.
    assert isinstance(tracker.receive('{"jsonrpc":"2.0","id":2,"result":{"delivered":true}}'), _core.Ignored)
    assert tracker.receive('{"jsonrpc":"2.0","id":9,"method":"x","params":{}}') == _core.Unreadable(
        None, "method not found: x"
    )
    # A broken event names its process, so that process can repair it by a read.
    broken = tracker.receive('{"jsonrpc":"2.0","method":"process/output","params":{"processId":"p1","seq":"x"}}')
    assert isinstance(broken, _core.Unreadable) and broken.process_id == "p1"
    assert isinstance(tracker.receive("not json"), _core.Unreadable)
    event = tracker.receive(p.encode_notification(p.ClosedEvent(process_id="p1", seq=3)))
    assert event == _core.Event(p.Notification("process/closed", p.ClosedEvent(process_id="p1", seq=3)))


def test_a_malformed_result_is_a_protocol_violation() -> None:
    tracker = _core.RequestTracker()
    request_id, _ = tracker.request(p.SignalParams(process_id="x", signal=p.SignalName.KILL))
    answer = tracker.receive(f'{{"jsonrpc":"2.0","id":{request_id},"result":{{"delivered":"yes"}}}}')
    assert isinstance(answer, _core.Answer) and isinstance(answer.error, exec_client.ProtocolViolation)


def test_the_handle_lifecycle_names_an_illegal_move() -> None:
    from exec_client._handle import _TRANSITIONS, HandleState

    lifecycle = Lifecycle("process p1", HandleState.STARTING, _TRANSITIONS)
    lifecycle.move(HandleState.RUNNING)
    lifecycle.move(HandleState.COMPLETE)
    with pytest.raises(IllegalTransition, match="process p1: illegal transition COMPLETE -> RUNNING"):
        lifecycle.move(HandleState.RUNNING)
