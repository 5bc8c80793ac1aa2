"""Lifecycles (protocol doc §4): drain after earlier disconnects, keepalive, sessions that end
when their client is done, the per-peer cap, and the state tables themselves.

Real processes over real loopback sockets; the keepalive tests run under trio's
``autojump_clock`` so that 15 s intervals cost no wall time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from exec_server._connection import Connection, ConnectionState
from exec_server._lifecycle import IllegalTransition, Lifecycle
from exec_server._server import ServerState
from exec_server._session import SessionState
from rawclient import LeanClient, RawClient, is_gone, no_leftover_processes, open_raw_client, output_of  # noqa: F401
from test_delivery_support import (
    MIB,
    hook_connection_ended,
    hook_detached,
    is_running,
    sha256,
    subprocess_server,
    terminate_and_time,
    wait_closed,
    wait_pid_exit,
    write_random,
)

GRACE_S: Final = 1.0
STREAM_BYTES: Final = 12 * MIB


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def terminal_kinds(raw: RawClient, process_id: str) -> list[str]:
    return [e.kind for e in raw.events_of(process_id) if e.kind in ("exited", "closed")]


async def connect_and_leave(url: str, token: str) -> None:
    """A client that came and went before the one under test (the drain once broke after it)."""
    async with open_raw_client(url, token) as early:
        await early.initialize()
        await early.run("hello", ["echo", "hi"])


async def drop_with_a_sleeper(url: str, token: str) -> int:
    """A client that starts a sleeper and drops without a close frame: its session stays detached."""
    async with LeanClient.connect("127.0.0.1", port_of(url), token) as dropping:
        await dropping.initialize()
        response = await dropping.call("process/start", {"processId": "left", "argv": ["sleep", "300"]})
        return int(response["result"]["pid"])
    # (leaving the block closes the TCP stream with no close frame: an abnormal drop)


async def stream_then_stop(raw: RawClient, data_path: Path, stop: Any) -> tuple[dict[str, int], float]:
    """Start a 12 MB stream and a sleeper, call ``stop()`` mid-stream, wait for the close.

    Returns the pids and the time ``stop`` was called.
    """
    await raw.initialize(delivery="lossless")
    pids = {
        "stream": (await raw.start("stream", ["cat", str(data_path)]))["pid"],
        "sleeper": (await raw.start("sleeper", ["sleep", "300"]))["pid"],
    }
    await raw.wait_event("stream", lambda e: e.kind == "output")
    sent = stop()
    assert await wait_closed(raw) == 1001
    return pids, sent


def assert_drained(raw: RawClient, data: bytes, pids: dict[str, int]) -> None:
    events = raw.events_of("stream")
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "a seq is missing or out of order"
    assert sha256(output_of(events)) == sha256(data)
    for process_id in ("stream", "sleeper"):
        assert terminal_kinds(raw, process_id) == ["exited", "closed"], process_id
        assert raw.events_of(process_id)[-1].kind == "closed"
    exited = {e.process_id: e.params for e in raw.events if e.kind == "exited"}
    assert exited["stream"]["exitCode"] == 0
    assert (exited["sleeper"]["exitCode"], exited["sleeper"]["signal"]) == (137, "SIGKILL")
    assert all(is_gone(pid) for pid in pids.values())


# --- the drain, whatever came before ---------------------------------------------------------


async def test_sigterm_drains_every_event_after_an_earlier_client_left(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    data = write_random(tmp_path / "data", STREAM_BYTES)
    with trio.fail_after(60):
        async with subprocess_server(tmp_path, "--shutdown-grace", str(GRACE_S)) as server:
            await connect_and_leave(server.url, server.token)
            left_behind = await drop_with_a_sleeper(server.url, server.token)
            async with open_raw_client(server.url, server.token) as raw:
                pids, sent = await stream_then_stop(raw, tmp_path / "data", lambda: terminate_and_time(server))
            returncode = await server.process.wait()
            elapsed = time.monotonic() - sent
    print(f"\n[drain after a disconnect] 12 MB byte-exact, 1001, exit {returncode} after {elapsed:.2f} s")
    assert_drained(raw, data, pids)
    assert is_gone(left_behind)  # the detached session's tree died with the drain
    assert returncode == 0
    assert elapsed < GRACE_S + 2


async def test_in_process_shutdown_drains_every_event_after_earlier_clients_left(
    start_server: Any, tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    data = write_random(tmp_path / "data", STREAM_BYTES)
    running = await start_server(shutdown_grace=GRACE_S)
    server = running.server
    ended = hook_connection_ended(server)
    with trio.fail_after(60):
        for _ in range(3):
            await connect_and_leave(running.url, running.token)
        left_behind = await drop_with_a_sleeper(running.url, running.token)
        await ended.wait_for(4)
        assert not server.connections
        async with open_raw_client(running.url, running.token) as raw:

            def shutdown() -> float:
                running.listener.cancel()
                nursery.start_soon(server.shutdown)
                return time.monotonic()

            pids, sent = await stream_then_stop(raw, tmp_path / "data", shutdown)
        await server.wait_stopped()
        elapsed = time.monotonic() - sent
    assert_drained(raw, data, pids)
    assert is_gone(left_behind)
    assert server.state is ServerState.STOPPED
    assert elapsed < GRACE_S + 2


# --- keepalive --------------------------------------------------------------------------------


async def test_a_silent_peer_is_detached_within_interval_plus_timeout(
    start_server: Any, autojump_clock: trio.testing.MockClock, no_leftover_processes: None
) -> None:
    interval, timeout = 15.0, 15.0
    running = await start_server(ping_interval=interval, ping_timeout=timeout, detached_session_ttl=3600.0)
    with trio.fail_after(interval + timeout + 30):
        async with LeanClient.connect("127.0.0.1", port_of(running.url), running.token) as silent:
            session_id = (await silent.initialize())["sessionId"]
            session = running.server.sessions[session_id]
            detached = hook_detached(session)
            began = trio.current_time()
            # From here on the peer never reads (so never pongs) and never closes its socket.
            await detached.wait()
            took = trio.current_time() - began
            assert session.state is SessionState.DETACHED
    print(f"\n[keepalive] a silent peer was detached after {took:.1f} s (interval {interval:g} + timeout {timeout:g})")
    assert interval + timeout - 1 <= took <= interval + timeout + 1


async def test_a_peer_that_answers_pings_stays_attached(
    start_server: Any, autojump_clock: trio.testing.MockClock, no_leftover_processes: None
) -> None:
    running = await start_server(ping_interval=1.0, ping_timeout=1.0)
    with trio.fail_after(60):
        async with open_raw_client(running.url, running.token) as raw:
            session_id = (await raw.initialize())["sessionId"]
            await trio.sleep(20)  # twenty ping rounds, each answered by the client's library
            assert running.server.sessions[session_id].state is SessionState.ATTACHED
            assert raw.closed is None


# --- sessions end when the client is done --------------------------------------------------


async def test_a_normal_close_of_an_empty_session_ends_it_at_once(
    server: Any, no_leftover_processes: None
) -> None:
    with trio.fail_after(10):
        async with LeanClient.connect("127.0.0.1", port_of(server.url), server.token) as lean:
            session_id = (await lean.initialize())["sessionId"]
            session = server.server.sessions[session_id]
            await lean.close(1000)
        # At once: no TTL (30 s) to wait for, no clock involved.
        with trio.fail_after(1):
            await session.wait_ended()
        assert session_id not in server.server.sessions
        async with open_raw_client(server.url, server.token) as again:
            await again.expect_error(
                "initialize", {"clientName": "t", "protocolVersion": 1, "resumeSessionId": session_id}, -32602
            )


async def test_a_normal_close_with_a_running_process_leaves_the_session_resumable(
    server: Any, no_leftover_processes: None
) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as first:
            session_id = (await first.initialize())["sessionId"]
            pid = (await first.start("sleeper", ["sleep", "300"]))["pid"]
        # Closed with 1000 while the process runs: detached, like any drop (docs §4).
        async with open_raw_client(server.url, server.token) as second:
            assert (await second.initialize(resumeSessionId=session_id))["resumed"] is True
            assert is_running(pid)
            await second.call("process/terminate", {"processId": "sleeper", "graceMs": 0})
            await second.events_for("sleeper")


async def test_ten_thousand_clean_cycles_leave_the_session_table_empty(
    start_server: Any, no_leftover_processes: None
) -> None:
    cycles, at_once = 10_000, 4
    running = await start_server()
    port = port_of(running.url)

    async def cycle_many(count: int) -> None:
        for _ in range(count):
            async with LeanClient.connect("127.0.0.1", port, running.token) as lean:
                await lean.initialize()
                await lean.close(1000)

    began = time.monotonic()
    with trio.fail_after(600):
        async with trio.open_nursery() as cyclers:
            for _ in range(at_once):
                cyclers.start_soon(cycle_many, cycles // at_once)
        took = time.monotonic() - began
        # More cycles than the table holds (4096): none of them was left behind.
        assert cycles > running.server.config.max_sessions
        with trio.fail_after(1):
            async with LeanClient.connect("127.0.0.1", port, running.token) as late:
                assert (await late.initialize())["resumed"] is False
                await late.close(1000)
    print(f"\n[clean cycles] {cycles} connect-initialize-close cycles in {took:.1f} s; then initialize at once")
    assert len(running.server.sessions) <= at_once


async def test_the_per_peer_cap_ends_the_oldest_detached_sessions(
    start_server: Any, no_leftover_processes: None
) -> None:
    cap, sessions = 3, 5
    running = await start_server(max_detached_per_peer=cap)
    pids: list[int] = []
    ids: list[str] = []
    with trio.fail_after(30):
        for index in range(sessions):
            async with open_raw_client(running.url, running.token) as raw:
                ids.append((await raw.initialize())["sessionId"])
                pids.append((await raw.start("sleeper", ["sleep", "300"]))["pid"])
            # Left with a running process: detached (a 1000 close with work in flight).
        for pid in pids[: sessions - cap]:
            await wait_pid_exit(pid)
        found = [running.server.find_session(session_id) for session_id in ids]
        assert [session is not None for session in found] == [False] * (sessions - cap) + [True] * cap
        assert all(session.state is SessionState.DETACHED for session in found[-cap:] if session is not None)
        assert all(is_running(pid) for pid in pids[-cap:])
        for session in found[-cap:]:
            assert session is not None
            session.end("test over")
        for pid in pids[-cap:]:
            await wait_pid_exit(pid)


# --- the state tables ---------------------------------------------------------------------


def test_an_illegal_move_names_the_object_and_the_move() -> None:
    lifecycle = Lifecycle("session abc", SessionState.DETACHED, {(SessionState.DETACHED, SessionState.ATTACHED)})
    lifecycle.move(SessionState.ATTACHED)
    with pytest.raises(IllegalTransition, match=r"^session abc: attached -> ended$"):
        lifecycle.move(SessionState.ENDED)
    assert lifecycle.state is SessionState.ATTACHED


async def test_wait_for_is_a_condition_on_the_state_not_a_latch() -> None:
    states = {(ServerState.STARTING, ServerState.SERVING), (ServerState.SERVING, ServerState.DRAINING)}
    lifecycle = Lifecycle("server", ServerState.STARTING, states)
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            reached: list[ServerState] = []

            async def waiter() -> None:
                await lifecycle.wait_for({ServerState.DRAINING})
                reached.append(lifecycle.state)

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            lifecycle.move(ServerState.SERVING)
            await trio.testing.wait_all_tasks_blocked()
            assert reached == []  # another change does not wake it for good
            lifecycle.move(ServerState.DRAINING)
        assert reached == [ServerState.DRAINING]
        await lifecycle.wait_for({ServerState.DRAINING})  # already there: at once


async def test_a_connection_closed_twice_keeps_the_first_reason(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            (connection,) = server.server.connections
            assert isinstance(connection, Connection) and connection.state is ConnectionState.OPEN
            connection.close(4001, "first")
            connection.close(1001, "second")  # idempotent: no illegal move, no new reason
            connection.finish(1001, "third")
            assert await wait_closed(raw) == 4001
            assert raw.closed is not None and raw.closed.reason.reason == "first"
        assert connection.state is ConnectionState.CLOSED


async def test_a_second_shutdown_and_a_stop_after_it_are_harmless(
    start_server: Any, no_leftover_processes: None
) -> None:
    running = await start_server(shutdown_grace=0.0)
    server = running.server
    with trio.fail_after(20):
        async with open_raw_client(running.url, running.token) as raw:
            await raw.initialize()
            pid = (await raw.start("sleeper", ["sleep", "300"]))["pid"]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown)
                nursery.start_soon(server.shutdown)
            assert server.state in (ServerState.CLOSING, ServerState.STOPPED)
            server.stop()
            assert await wait_closed(raw) == 1001
        await server.wait_stopped()
    assert is_gone(pid)



def test_the_assembler_state_is_one_field_with_a_table() -> None:
    import protocol as p
    from protocol._assembler import _ALLOWED

    assembler = p.Assembler("proc-1", ["true"])
    assert assembler.state is p.AssemblerState.RECEIVING
    progress = assembler.connection_lost("gone")
    assert isinstance(progress.action, p.Complete) and assembler.state is p.AssemblerState.COMPLETE
    # Nothing leaves COMPLETE, and push-mode reading never turns into legacy polling.
    assert {new for old, new in _ALLOWED if old is p.AssemblerState.COMPLETE} == {p.AssemblerState.COMPLETE}
    assert (p.AssemblerState.READING, p.AssemblerState.POLLING) not in _ALLOWED
    with pytest.raises(p.AssemblerError, match=r"^assembler proc-1: complete -> receiving$"):
        assembler._move(p.AssemblerState.RECEIVING)


def test_a_keepalive_flag_out_of_range_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from rawclient import REPO_ROOT, cli_env

    result = subprocess.run(
        [sys.executable, "-m", "exec_server", "serve", "--token-file", str(tmp_path / "token"), "--ping-timeout", "0"],
        cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "exec-server: 'ping_timeout' must be > 0: 0.0"
    assert "Traceback" not in result.stderr
