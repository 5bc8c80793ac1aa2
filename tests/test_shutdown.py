"""Graceful shutdown on SIGTERM (protocol §4), against ``python -m exec_server serve`` as a child."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trio_websocket

from nspid import host_pid
from rawclient import RawClient, is_gone, no_leftover_processes, open_raw_client, output_of  # noqa: F401
from test_delivery import wait_until_writes_stall
from test_delivery_support import StallProxy, subprocess_server, terminate_and_time, wait_closed, wait_pid_exit

GRACE_S: Final = 1.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def terminal_events(raw: RawClient, process_id: str) -> list[dict[str, Any]]:
    return [{"kind": e.kind, **e.params} for e in raw.events_of(process_id) if e.kind in ("exited", "closed")]


async def first_line_pid(raw: RawClient, process_id: str, launched: int) -> int:
    """The host pid of the process whose (namespace) pid the command printed first."""
    await raw.wait_until(lambda: b"\n" in output_of(raw.events_of(process_id)))
    return host_pid(int(output_of(raw.events_of(process_id)).split()[0]), launched)


async def test_sigterm_drains_two_connections_and_exits_0_within_grace(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", str(GRACE_S)) as server:
            async with (
                open_raw_client(server.url, server.token) as one,
                open_raw_client(server.url, server.token) as two,
            ):
                await one.initialize()
                await two.initialize()
                pids = {
                    "sleeper": (await one.start("sleeper", ["sleep", "300"]))["pid"],
                    "tree": (await one.start("tree", ["sh", "-c", "sleep 300 & echo $!; wait"]))["pid"],
                    "polite": (await two.start("polite", ["sh", "-c", "read line; echo bye $line"], pipeStdin=True))[
                        "pid"
                    ],
                }
                grandchild = await first_line_pid(one, "tree", pids["tree"])
                sent = terminate_and_time(server)
                await server.wait_stderr(b"draining")
                # No new processes, on either connection.
                for raw in (one, two):
                    await raw.expect_error("process/start", {"processId": "late", "argv": ["true"]}, -32004)
                # Running processes still get their grace, and requests on them are served:
                # this one finishes by itself, the other two are killed after the grace.
                await two.call("process/write", {"processId": "polite", "chunk": b64(b"now\n")})
                codes = (await wait_closed(one), await wait_closed(two))
                closed_after = time.monotonic() - sent
                # A brand-new connection gets nowhere (the listener is closed, or no session).
                try:
                    async with open_raw_client(server.url, server.token) as late:
                        await late.expect_error("initialize", {"clientName": "t", "protocolVersion": 1}, -32004)
                except (OSError, trio_websocket.HandshakeError):
                    pass
            returncode = await server.process.wait()
            elapsed = time.monotonic() - sent
    print(
        f"\n[shutdown] SIGTERM -> both connections closed after {closed_after:.2f} s, "
        f"exit {returncode} after {elapsed:.2f} s (grace {GRACE_S:g} s)"
    )
    assert codes == (1001, 1001)
    assert returncode == 0
    assert elapsed < GRACE_S + 2
    # Each client got exited then closed for each of its processes, and nothing after closed.
    for raw, process_id in ((one, "sleeper"), (one, "tree"), (two, "polite")):
        terminal = terminal_events(raw, process_id)
        assert [event["kind"] for event in terminal] == ["exited", "closed"], (process_id, terminal)
        assert raw.events_of(process_id)[-1].kind == "closed"
    for process_id in ("sleeper", "tree"):
        exited = terminal_events(one, process_id)[0]
        assert (exited["exitCode"], exited["signal"]) == (137, "SIGKILL"), exited
    polite = terminal_events(two, "polite")[0]
    assert (polite["exitCode"], polite["signal"]) == (0, None)
    assert output_of(two.events_of("polite")) == b"bye now\n"
    # No process is left: not the commands, not the grandchild.
    for pid in (*pids.values(), grandchild):
        assert is_gone(pid), pid


async def test_a_second_signal_kills_every_tree_at_once(tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        # A grace far beyond the test's guard: only the second signal can end this in time.
        async with subprocess_server(tmp_path, "--shutdown-grace", "600") as server:
            async with open_raw_client(server.url, server.token) as raw:
                await raw.initialize()
                pid = (await raw.start("tree", ["sh", "-c", "sleep 300 & echo $!; wait"]))["pid"]
                grandchild = await first_line_pid(raw, "tree", pid)
                terminate_and_time(server)
                await server.wait_stderr(b"draining")
                sent = terminate_and_time(server)
                await server.wait_stderr(b"second signal")
                with trio.fail_after(5):
                    await wait_pid_exit(pid)
                    await wait_pid_exit(grandchild)
                code = await wait_closed(raw)
            returncode = await server.process.wait()
            elapsed = time.monotonic() - sent
    print(f"\n[shutdown] second SIGTERM -> exit {returncode} in {elapsed:.2f} s, close code {code}")
    assert returncode == 0
    assert is_gone(pid) and is_gone(grandchild)


async def test_server_exits_promptly_once_its_connections_closed(tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", "0") as server:
            async with open_raw_client(server.url, server.token) as raw:
                await raw.initialize()
                await raw.start("sleeper", ["sleep", "300"])
                terminate_and_time(server)
                assert await wait_closed(raw) == 1001
                closed = time.monotonic()
                # Still inside the client: it answered the close frame and waits for the TCP close.
                await server.process.wait()
                after_close = time.monotonic() - closed
    print(f"\n[shutdown] exit {after_close:.2f} s after the 1001 close frame")
    # Nothing is left to do once the close frame is out but to read the peer's answer and exit.
    assert after_close < 0.7


async def test_a_second_signal_still_closes_connections_with_1001(tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", "600") as server:
            async with open_raw_client(server.url, server.token) as raw:
                await raw.initialize()
                await raw.start("sleeper", ["sleep", "300"])
                terminate_and_time(server)
                await server.wait_stderr(b"draining")
                terminate_and_time(server)
                assert await wait_closed(raw) == 1001


async def test_sigterm_with_a_stalled_lossless_client_still_exits_promptly_and_kills_everything(
    tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    """A lossless client that stopped reading holds its child (by design) and has no slow-consumer
    timeout; the drain must not wait on it beyond the grace."""
    pid = None
    try:
        with trio.fail_after(30):
            async with subprocess_server(tmp_path, "--shutdown-grace", str(GRACE_S)) as server:
                proxy = await nursery.start(StallProxy(int(server.url.rsplit(":", 1)[1])).serve)
                async with open_raw_client(proxy.url, server.token) as raw:
                    await raw.initialize(delivery="lossless")
                    argv = ["sh", "-c", "read go; exec cat /dev/zero"]
                    pid = (await raw.start("flood", argv, pipeStdin=True))["pid"]
                    proxy.stall()
                    await raw.send_request("process/write", {"processId": "flood", "chunk": b64(b"go\n")})
                    await wait_until_writes_stall(pid)
                    assert not is_gone(pid)
                    sent = terminate_and_time(server)
                    # The bound under test (a timeout, not a synchronisation); on expiry the
                    # fixture kills the server.
                    with trio.move_on_after(GRACE_S + 2):
                        await server.process.wait()
                    elapsed = time.monotonic() - sent
                    returncode = server.process.returncode
                    proxy.cut()  # let the client's close end at once
        print(f"\n[shutdown, stalled lossless client] exit {returncode} after {elapsed:.2f} s (grace {GRACE_S:g} s)")
        assert returncode == 0
        assert is_gone(pid)
    finally:
        if pid is not None and not is_gone(pid):
            os.kill(pid, signal.SIGKILL)  # never leave the flood behind, whatever failed


async def test_a_killed_server_leaves_no_command_running(tmp_path: Path, no_leftover_processes: None) -> None:
    """A crash (SIGKILL, OOM) runs no shutdown code; the commands must still not outlive the server."""
    pids: list[int] = []
    try:
        with trio.fail_after(20):
            async with subprocess_server(tmp_path) as server:
                async with open_raw_client(server.url, server.token) as raw:
                    await raw.initialize()
                    pids.append((await raw.start("sleeper", ["sleep", "300"]))["pid"])
                    os.kill(server.pid, signal.SIGKILL)
                    await server.process.wait()
                    await wait_closed(raw)
            # The bound under test (a timeout, not a synchronisation).
            with trio.move_on_after(2):
                for pid in pids:
                    await wait_pid_exit(pid)
        assert all(is_gone(pid) for pid in pids), [pid for pid in pids if not is_gone(pid)]
    finally:
        for pid in pids:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_long_poll_in_flight_at_sigterm_is_answered_before_the_1001(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", str(GRACE_S)) as server:
            async with open_raw_client(server.url, server.token) as raw:
                await raw.initialize()
                pid = (await raw.start("sleeper", ["sleep", "300"]))["pid"]
                # Parked: nothing after seq 0 yet, and the process will not write.
                poll = await raw.send_request(
                    "process/read", {"processId": "sleeper", "afterSeq": 0, "waitMs": 60_000}
                )
                terminate_and_time(server)
                await server.wait_stderr(b"draining")
                code = await wait_closed(raw)
                assert await server.process.wait() == 0
    # Answered (woken by the kill at the end of the grace), and before the close frame.
    answers = [message for message in raw.log if message.get("id") == poll]
    assert len(answers) == 1 and "result" in answers[0], answers
    assert answers[0]["result"]["exited"] is True
    assert code == 1001
    assert is_gone(pid)
