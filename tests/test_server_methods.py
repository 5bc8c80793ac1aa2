"""Every method of protocol §4–§5 over a real loopback WebSocket, with real processes.

Plain JSON through ``rawclient``: these tests pin the wire, not our codec.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from nspid import host_pid
from rawclient import (  # noqa: F401  (fixtures are used by name)
    Event,
    RawClient,
    client,
    PidWatch,
    is_gone,
    no_leftover_processes,
    open_raw_client,
    output_of,
)

PY = sys.executable


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def exited_of(events: list[Event]) -> dict[str, Any]:
    (exited,) = [e.params for e in events if e.kind == "exited"]
    return exited


async def echo_lines(client: RawClient, process_id: str, *pieces: bytes) -> None:
    """Feed ``cat`` one piece at a time, waiting for each echo so each is one chunk (one seq)."""
    expected = b""
    for piece in pieces:
        expected += piece
        assert (await client.call("process/write", {"processId": process_id, "chunk": b64(piece)}))["status"] == "accepted"
        await client.wait_output(process_id, expected)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- initialize ---------------------------------------------------------------------------


async def test_initialize_result(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            result = await raw.call(
                "initialize", {"clientName": "t", "clientVersion": "0", "protocolVersion": 1, "delivery": "bestEffort"}
            )
            await raw.notify("initialized", {})
            # Hex, so a session id is safe as a command-line argument (never a leading "-").
            assert re.fullmatch(r"[0-9a-f]{32}", result["sessionId"]), result["sessionId"]
            assert result["protocolVersion"] == 1
            assert result["serverName"] and result["serverVersion"]
            caps = result["capabilities"]
            assert caps["pushEvents"] is True and caps["lossless"] is True and caps["release"] is True
            assert isinstance(caps["sandbox"]["available"], bool) and isinstance(caps["sandbox"]["types"], list)
            limits = result["limits"]
            config = server.server.config
            assert limits["maxMessageBytes"] == config.max_message_bytes
            assert limits["maxProcessesPerSession"] == config.max_processes_per_session
            assert limits["retainBytes"] == config.retain_bytes
            assert limits["detachedSessionTtlMs"] == int(config.detached_session_ttl * 1000)
            assert result["resumed"] is False
            # `initialized` needs no answer; the session serves right after it.
            assert (await raw.call("process/list"))["processes"] == []
            # Each connection gets its own session.
            async with open_raw_client(server.url, server.token) as other:
                assert (await other.initialize())["sessionId"] != result["sessionId"]


async def test_initialize_accepts_messages_without_jsonrpc_field(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            response = await raw.request("initialize", {"clientName": "codex", "protocolVersion": 1}, jsonrpc=False)
            assert "sessionId" in response["result"]
            response = await raw.request("process/list", {}, request_id="str-id", jsonrpc=False)
            assert response["id"] == "str-id" and response["result"] == {"processes": []}


# --- process/start -------------------------------------------------------------------------


async def test_start_result_and_exit(client: RawClient) -> None:
    with trio.fail_after(10):
        result = await client.start("p1", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert result["processId"] == "p1"
        assert isinstance(result["pid"], int) and result["pid"] > 1
        assert result["sandboxType"] == "none"
        events = await client.events_for("p1")
        assert output_of(events, "stdout") == b"out\n"
        assert output_of(events, "stderr") == b"err\n"
        exited = exited_of(events)
        assert exited["exitCode"] == 3 and exited["signal"] is None
        assert exited["timedOut"] is False and exited["sandboxDenied"] is False
        assert is_gone(result["pid"])


async def test_start_runs_in_its_own_process_group(client: RawClient) -> None:
    with trio.fail_after(10):
        result = await client.start("g", [PY, "-c", "import os; print(os.getpgid(0), os.getpid())"])
        assert os.getpgid(result["pid"]) == result["pid"] != os.getpgid(0)
        events = await client.events_for("g")
        # The command is PID 2 of its own PID namespace, in the launcher's group (whose
        # leader is outside the namespace: 0).
        pgid, pid = output_of(events).split()
        assert (int(pgid), int(pid)) == (0, 2)


async def test_start_cwd(client: RawClient, tmp_path: Path) -> None:
    with trio.fail_after(10):
        events = await client.run("cwd", ["pwd", "-P"], cwd=str(tmp_path))
        assert output_of(events) == f"{tmp_path.resolve()}\n".encode()


async def test_start_env_merges_with_inherited(client: RawClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXEC_TEST_INHERITED", "from-server")
    monkeypatch.setenv("EXEC_TEST_OVERRIDDEN", "old")
    with trio.fail_after(10):
        events = await client.run("env", ["/usr/bin/env"], env={"EXEC_TEST_OVERRIDDEN": "new", "EXEC_TEST_ADDED": "a b=c"})
        lines = set(output_of(events).decode().splitlines())
        assert {"EXEC_TEST_INHERITED=from-server", "EXEC_TEST_OVERRIDDEN=new", "EXEC_TEST_ADDED=a b=c"} <= lines
        assert "EXEC_TEST_OVERRIDDEN=old" not in lines


async def test_start_inherit_env_false(client: RawClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXEC_TEST_INHERITED", "leak")
    with trio.fail_after(10):
        events = await client.run("clean", ["/usr/bin/env"], env={"ONLY": "this"}, inheritEnv=False)
        names = {line.split("=", 1)[0] for line in output_of(events).decode().splitlines()}
        # The server tags each tree with one marker variable of its own (how it finds
        # descendants that left the group); nothing else may appear.
        assert "ONLY" in names
        assert {name for name in names if not name.startswith("EXEC_SERVER_")} == {"ONLY"}, names


async def test_start_without_pipe_stdin_reads_eof(client: RawClient) -> None:
    with trio.fail_after(10):
        events = await client.run("nostdin", ["cat"])
        assert output_of(events) == b"" and exited_of(events)["exitCode"] == 0
        result = await client.call("process/write", {"processId": "nostdin", "chunk": b64(b"x")})
        assert result["status"] == "stdinClosed"


@pytest.mark.parametrize(
    ("argv", "cwd", "errno_name"),
    [
        (["/nonexistent/program"], None, "ENOENT"),
        (["no-such-program-on-path-xyz"], None, "ENOENT"),
        (["/etc/passwd"], None, "EACCES"),  # a regular file without the x bit
        (["/tmp"], None, "EACCES"),  # a directory
        (["true"], "/nonexistent/dir", "ENOENT"),
        (["true"], "/etc/passwd", "ENOTDIR"),
    ],
)
async def test_start_spawn_failures(client: RawClient, argv: list[str], cwd: str | None, errno_name: str) -> None:
    with trio.fail_after(10):
        params: dict[str, Any] = {"processId": "bad", "argv": argv}
        if cwd is not None:
            params["cwd"] = cwd
        error = await client.expect_error("process/start", params, -32007)
        assert error.data["errno"] == errno_name
        assert isinstance(error.data["strerror"], str) and error.data["strerror"]
        # A failed spawn leaves nothing behind: the id is free and no events were pushed.
        assert client.events_of("bad") == []
        events = await client.run("bad", ["true"])
        assert exited_of(events)["exitCode"] == 0


async def test_start_not_executable_file(client: RawClient, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with trio.fail_after(10):
        error = await client.expect_error("process/start", {"processId": "nx", "argv": [str(script)]}, -32007)
        assert error.data["errno"] == "EACCES"
        script.chmod(0o755)
        events = await client.run("x", [str(script)])
        assert output_of(events) == b"hi\n"


# --- output --------------------------------------------------------------------------------


async def test_output_is_byte_exact(client: RawClient, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64 + b"\x00\x00\xc3\x28\xff\xfe\xed\xa0\x80 tail without newline"
    blob = tmp_path / "blob"
    blob.write_bytes(payload)
    with trio.fail_after(10):
        events = await client.run("bin", ["sh", "-c", 'cat "$1"; cat "$1" >&2', "sh", str(blob)])
        assert output_of(events, "stdout") == payload
        assert output_of(events, "stderr") == payload


async def test_20_mib_binary_stdout_by_push(start_server: Any, no_leftover_processes: None, tmp_path: Path) -> None:
    """Acceptance: 20 MiB of binary stdout arrives byte-exact by push, with contiguous seqs."""
    payload = hashlib.shake_256(b"exec-server").digest(20 * 1024 * 1024)
    blob = tmp_path / "blob"
    blob.write_bytes(payload)
    server = await start_server()
    with trio.fail_after(40):
        async with open_raw_client(server.url, server.token) as raw:
            # Lossless: nothing may be dropped whatever the scheduling, so the assertion is exact.
            await raw.initialize(delivery="lossless")
            events = await raw.run("big", ["cat", str(blob)])
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert kinds(events)[-2:] == ["exited", "closed"]
            data = output_of(events)
            assert len(data) == len(payload)
            assert hashlib.sha256(data).hexdigest() == hashlib.sha256(payload).hexdigest()
            assert raw.closed is None


# --- process/read --------------------------------------------------------------------------


async def test_read_after_seq_and_max_bytes(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("r", ["cat"], pipeStdin=True)
        await echo_lines(client, "r", b"aaaa", b"bbbb", b"cccc")
        assert [e.seq for e in client.events_of("r")] == [1, 2, 3]
        await client.call("process/write", {"processId": "r", "chunk": "", "eof": True})
        events = await client.events_for("r")
        assert [(e.kind, e.seq) for e in events] == [("output", 1), ("output", 2), ("output", 3), ("exited", 4), ("closed", 5)]

        def chunks(result: dict[str, Any]) -> list[tuple[int, str, bytes]]:
            return [(c["seq"], c["stream"], base64.b64decode(c["chunk"])) for c in result["chunks"]]

        whole = await client.call("process/read", {"processId": "r"})
        assert chunks(whole) == [(1, "stdout", b"aaaa"), (2, "stdout", b"bbbb"), (3, "stdout", b"cccc")]
        assert whole["nextSeq"] == 6 and whole["lastSeq"] == 5 and whole["retainedFromSeq"] == 1
        assert whole["exited"] is True and whole["closed"] is True and whole["exitCode"] == 0
        assert whole["signal"] is None and whole["timedOut"] is False and whole["sandboxDenied"] is False
        assert whole["durationMs"] >= 0 and whole["usage"]["maxRssKb"] > 0
        assert whole["evictedBytes"] == {"stdout": 0, "stderr": 0}

        # Truncated by maxBytes: nextSeq is the seq after the last returned chunk.
        first = await client.call("process/read", {"processId": "r", "afterSeq": 0, "maxBytes": 5})
        assert chunks(first) == [(1, "stdout", b"aaaa")] and first["nextSeq"] == 2
        # The first chunk is always included, even over maxBytes.
        tiny = await client.call("process/read", {"processId": "r", "afterSeq": 1, "maxBytes": 1})
        assert chunks(tiny) == [(2, "stdout", b"bbbb")] and tiny["nextSeq"] == 3
        # Exactly fitting: not truncated, so nextSeq also covers exited and closed.
        rest = await client.call("process/read", {"processId": "r", "afterSeq": 1, "maxBytes": 8})
        assert chunks(rest) == [(2, "stdout", b"bbbb"), (3, "stdout", b"cccc")] and rest["nextSeq"] == 6
        # Past the output: no chunks, terminal state, nextSeq > lastSeq.
        end = await client.call("process/read", {"processId": "r", "afterSeq": 3})
        assert end["chunks"] == [] and end["nextSeq"] == 6 and end["closed"] is True
        beyond = await client.call("process/read", {"processId": "r", "afterSeq": 5})
        assert beyond["chunks"] == [] and beyond["nextSeq"] == 6


async def test_read_reports_eviction(client: RawClient) -> None:
    with trio.fail_after(10):
        # Each 4-byte chunk costs 4 + 128 bytes of retention: 300 bytes keep two chunks.
        await client.start("ev", ["cat"], pipeStdin=True, retainBytes=300)
        await echo_lines(client, "ev", b"1111", b"2222", b"3333")
        result = await client.call("process/read", {"processId": "ev", "afterSeq": 0})
        assert result["retainedFromSeq"] == 2
        assert [c["seq"] for c in result["chunks"]] == [2, 3]
        assert result["evictedBytes"] == {"stdout": 4, "stderr": 0}
        await client.call("process/write", {"processId": "ev", "eof": True})
        await client.events_for("ev")


async def test_read_while_running(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("run", ["cat"], pipeStdin=True)
        await echo_lines(client, "run", b"hello")
        result = await client.call("process/read", {"processId": "run"})
        assert result["exited"] is False and result["closed"] is False
        assert result["exitCode"] is None and result["signal"] is None
        assert result["nextSeq"] == 2 and result["lastSeq"] == 1
        await client.call("process/write", {"processId": "run", "eof": True})
        await client.events_for("run")


async def test_read_long_poll_returns_when_output_arrives(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("lp", ["cat"], pipeStdin=True)
        read_id = await client.send_request("process/read", {"processId": "lp", "afterSeq": 0, "waitMs": 60_000})
        # Requests run in arrival order: once a later request is answered, the read is
        # already parked in its long-poll.
        await client.call("process/list")
        await client.call("process/write", {"processId": "lp", "chunk": b64(b"late")})
        response = await client.response(read_id)
        result = response["result"]
        assert [base64.b64decode(c["chunk"]) for c in result["chunks"]] == [b"late"]
        assert result["nextSeq"] == 2
        # Parked again after the last seq: the process closing also ends the wait.
        read_id = await client.send_request("process/read", {"processId": "lp", "afterSeq": 1, "waitMs": 60_000})
        await client.call("process/list")
        await client.call("process/write", {"processId": "lp", "eof": True})
        result = (await client.response(read_id))["result"]
        assert result["chunks"] == [] and result["exited"] is True
        assert result["nextSeq"] >= 3


async def test_read_long_poll_times_out(
    server: Any, autojump_clock: trio.testing.MockClock, no_leftover_processes: None
) -> None:
    async with open_raw_client(server.url, server.token) as raw:
        with trio.fail_after(120):
            await raw.initialize()
            await raw.start("quiet", ["cat"], pipeStdin=True)
            before = trio.current_time()
            result = await raw.call("process/read", {"processId": "quiet", "afterSeq": 0, "waitMs": 30_000})
            waited = trio.current_time() - before
            assert result["chunks"] == [] and result["closed"] is False and result["nextSeq"] == 1
            assert 30 <= waited < 60
        # From here on, real processes run: let the clock follow real time again.
        autojump_clock.autojump_threshold = math.inf
        autojump_clock.rate = 1.0
        with trio.fail_after(10):
            await raw.call("process/write", {"processId": "quiet", "eof": True})
            events = await raw.events_for("quiet")
            assert exited_of(events)["exitCode"] == 0


# --- process/write -------------------------------------------------------------------------


async def test_write_reaches_child_and_eof_closes_stdin(client: RawClient) -> None:
    with trio.fail_after(10):
        reverse = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1])"
        await client.start("w", [PY, "-c", reverse], pipeStdin=True)
        assert (await client.call("process/write", {"processId": "w", "chunk": b64(b"\x00abc\xff")}))["status"] == "accepted"
        last = {"processId": "w", "chunk": b64(b"def"), "eof": True}
        assert (await client.call("process/write", last))["status"] == "accepted"
        events = await client.events_for("w")
        assert output_of(events) == b"fed\xffcba\x00"
        assert (await client.call("process/write", {"processId": "w", "chunk": b64(b"more")}))["status"] == "stdinClosed"


async def test_write_eof_without_data(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("e", ["cat"], pipeStdin=True)
        assert (await client.call("process/write", {"processId": "e", "eof": True}))["status"] == "accepted"
        events = await client.events_for("e")
        assert output_of(events) == b"" and exited_of(events)["exitCode"] == 0
        assert (await client.call("process/write", {"processId": "e", "eof": True}))["status"] == "stdinClosed"


async def test_write_id_retried_is_applied_once(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("dup", ["cat"], pipeStdin=True)
        for _ in range(3):
            result = await client.call("process/write", {"processId": "dup", "chunk": b64(b"once;"), "writeId": "w-1"})
            assert result["status"] == "accepted"
        await client.call("process/write", {"processId": "dup", "chunk": b64(b"twice;"), "writeId": "w-2"})
        await client.call("process/write", {"processId": "dup", "chunk": b64(b"twice;"), "writeId": "w-2"})
        await client.call("process/write", {"processId": "dup", "chunk": b64(b"free;")})
        await client.call("process/write", {"processId": "dup", "chunk": b64(b"free;"), "eof": True})
        events = await client.events_for("dup")
        assert output_of(events) == b"once;twice;free;free;"


async def test_write_unknown_process_and_no_pipe(client: RawClient) -> None:
    with trio.fail_after(10):
        result = await client.call("process/write", {"processId": "never", "chunk": b64(b"x")})
        assert result["status"] == "unknownProcess"
        await client.start("nopipe", ["cat"])
        result = await client.call("process/write", {"processId": "nopipe", "chunk": b64(b"x")})
        assert result["status"] == "stdinClosed"
        await client.events_for("nopipe")


# --- process/signal ------------------------------------------------------------------------

# The child installs its handler before it says "ready", so the signal cannot race it.
INTERRUPTIBLE_CHILD = (
    "import signal, sys\n"
    "def on_int(*_): print('child-int', flush=True); sys.exit(3)\n"
    "signal.signal(signal.SIGINT, on_int)\n"
    "print('ready', flush=True)\n"
    "while True: signal.pause()\n"
)
TRAP_BOTH = 'trap "echo parent-int" INT; "$0" -c "$1"; echo parent-after $?; exit 9'


async def test_signal_interrupt_reaches_the_group(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("sig", ["sh", "-c", TRAP_BOTH, PY, INTERRUPTIBLE_CHILD])
        await client.wait_output("sig", b"ready\n")
        assert (await client.call("process/signal", {"processId": "sig", "signal": "interrupt"}))["delivered"] is True
        events = await client.events_for("sig")
        # Both the child and the parent shell waiting for it got SIGINT: the whole group.
        assert output_of(events) == b"ready\nchild-int\nparent-int\nparent-after 3\n"
        assert exited_of(events)["exitCode"] == 9 and exited_of(events)["signal"] is None


@pytest.mark.parametrize(
    ("name", "signum"), [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL), ("hangup", signal.SIGHUP)]
)
async def test_signal_names(client: RawClient, name: str, signum: signal.Signals) -> None:
    with trio.fail_after(10):
        await client.start("s", ["sleep", "30"])
        assert (await client.call("process/signal", {"processId": "s", "signal": name}))["delivered"] is True
        exited = exited_of(await client.events_for("s"))
        assert exited["exitCode"] == 128 + signum and exited["signal"] == signum.name
        # After close, nothing is left to deliver to.
        assert (await client.call("process/signal", {"processId": "s", "signal": name}))["delivered"] is False


# --- process/terminate ---------------------------------------------------------------------


async def test_terminate_kills_whole_tree_including_setsid_grandchild(client: RawClient) -> None:
    with trio.fail_after(10):
        started = await client.start("tree", ["sh", "-c", "setsid sh -c 'echo $$; exec sleep 60' & sleep 60"])
        out = await client.wait_output("tree", b"\n")
        grandchild = host_pid(int(out.split()[0]), started["pid"])
        assert os.getsid(grandchild) == grandchild  # it left the group and the session
        watch = PidWatch(grandchild)
        result = await client.call("process/terminate", {"processId": "tree", "graceMs": 5000})
        assert result["running"] is True
        events = await client.events_for("tree")  # closed needs the grandchild's stdout closed too
        exited = exited_of(events)
        assert exited["exitCode"] == 128 + signal.SIGTERM and exited["signal"] == "SIGTERM"
        await watch.wait_exited()
        # Already exited: running is false, and terminate stays harmless.
        assert (await client.call("process/terminate", {"processId": "tree"}))["running"] is False


async def test_terminate_escalates_to_sigkill_after_grace(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("stubborn", ["sh", "-c", 'trap "" TERM; echo ready; sleep 60'])
        await client.wait_output("stubborn", b"ready\n")
        before = trio.current_time()
        assert (await client.call("process/terminate", {"processId": "stubborn", "graceMs": 200}))["running"] is True
        exited = exited_of(await client.events_for("stubborn"))
        assert exited["exitCode"] == 137 and exited["signal"] == "SIGKILL"
        assert trio.current_time() - before >= 0.2


async def test_terminate_running_false_after_exit_before_close(client: RawClient) -> None:
    with trio.fail_after(10):
        # The shell waits for a line before it exits, so the holder is looked up while its
        # namespace's launcher still lives (once it is gone the lookup races the re-parenting).
        started = await client.start("hold", ["sh", "-c", "sleep 60 & echo $!; read line"], pipeStdin=True)
        holder = host_pid(int((await client.wait_output("hold", b"\n")).split()[0]), started["pid"])
        watch = PidWatch(holder)
        await client.call("process/write", {"processId": "hold", "chunk": b64(b"\n")})
        await client.wait_event("hold", lambda e: e.kind == "exited")
        # Exited, but a grandchild still holds stdout: not closed, and not running either.
        assert (await client.call("process/terminate", {"processId": "hold", "graceMs": 5000}))["running"] is False
        events = await client.events_for("hold")
        assert kinds(events)[-1] == "closed"
        await watch.wait_exited()


# --- process/release -----------------------------------------------------------------------


async def test_release_lifecycle(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("rel", ["cat"], pipeStdin=True)
        error = await client.expect_error("process/release", {"processId": "rel"}, -32008)
        assert "rel" in error.message
        await client.call("process/write", {"processId": "rel", "chunk": b64(b"x"), "eof": True})
        await client.events_for("rel")
        assert await client.call("process/release", {"processId": "rel"}) == {}
        assert await client.call("process/release", {"processId": "rel"}) == {}  # idempotent
        await client.expect_error("process/read", {"processId": "rel"}, -32003)
        await client.expect_error("process/release", {"processId": "never-started"}, -32001)
        listed = await client.call("process/list")
        assert [p["processId"] for p in listed["processes"]] == []


# --- process/list --------------------------------------------------------------------------


async def test_list(client: RawClient) -> None:
    with trio.fail_after(10):
        started = await client.start("live", ["cat"], pipeStdin=True)
        await echo_lines(client, "live", b"hi")
        await client.run("done", ["true"])
        listed = {p["processId"]: p for p in (await client.call("process/list"))["processes"]}
        assert listed["live"] == {"processId": "live", "pid": started["pid"], "argv": ["cat"], "state": "running", "nextSeq": 2}
        assert listed["done"]["state"] == "closed" and listed["done"]["nextSeq"] == 3 and listed["done"]["argv"] == ["true"]
        await client.call("process/write", {"processId": "live", "eof": True})
        await client.events_for("live")


# --- exits, timeouts, usage ----------------------------------------------------------------


async def test_timeout_kills_whole_tree_and_keeps_partial_output(client: RawClient) -> None:
    with trio.fail_after(10):
        started = await client.start(
            "slow", ["sh", "-c", "echo partial; setsid sh -c 'echo $$; exec sleep 60' & sleep 60 & wait"], timeoutMs=300
        )
        await client.wait_until(lambda: output_of(client.events_of("slow")).count(b"\n") >= 2)
        watch = PidWatch(host_pid(int(output_of(client.events_of("slow")).split()[1]), started["pid"]))
        events = await client.events_for("slow")
        out = output_of(events)
        assert out.startswith(b"partial\n")
        exited = exited_of(events)
        assert exited["timedOut"] is True
        assert exited["exitCode"] == 137 and exited["signal"] == "SIGKILL"
        assert exited["durationMs"] >= 300
        await watch.wait_exited()
        read = await client.call("process/read", {"processId": "slow"})
        assert read["timedOut"] is True and read["closed"] is True
        assert b"".join(base64.b64decode(c["chunk"]) for c in read["chunks"]) == out


async def test_timeout_not_reached(client: RawClient) -> None:
    with trio.fail_after(10):
        exited = exited_of(await client.run("fast", ["true"], timeoutMs=60_000))
        assert exited["timedOut"] is False and exited["exitCode"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGSEGV])
async def test_self_killed_exit_code_and_signal_name(client: RawClient, signum: signal.Signals) -> None:
    with trio.fail_after(10):
        exited = exited_of(await client.run("k", [PY, "-c", f"import os; os.kill(os.getpid(), {int(signum)})"]))
        assert exited["exitCode"] == 128 + signum
        assert exited["signal"] == signum.name
        assert exited["timedOut"] is False


async def test_plain_exit_codes(client: RawClient) -> None:
    with trio.fail_after(10):
        for code in (0, 1, 127, 255):
            exited = exited_of(await client.run(f"x{code}", ["sh", "-c", f"exit {code}"]))
            assert exited["exitCode"] == code and exited["signal"] is None


async def test_usage_and_duration(client: RawClient) -> None:
    burn = (
        "import time\n"
        "end = time.process_time() + 0.15\n"
        "while time.process_time() < end: pass\n"
        "b = bytearray(30 * 1024 * 1024)\n"
    )
    with trio.fail_after(10):
        before = trio.current_time()
        exited = exited_of(await client.run("cpu", [PY, "-c", burn]))
        elapsed_ms = (trio.current_time() - before) * 1000
        usage = exited["usage"]
        assert usage["userCpuMs"] + usage["systemCpuMs"] >= 100
        assert usage["userCpuMs"] >= 0 and usage["systemCpuMs"] >= 0
        assert 30 * 1024 <= usage["maxRssKb"] < 4 * 1024 * 1024
        assert 150 <= exited["durationMs"] <= elapsed_ms + 50
        short = exited_of(await client.run("short", ["true"]))
        assert 0 < short["durationMs"] < exited["durationMs"]


# --- server teardown -------------------------------------------------------------------------


async def test_cancelled_server_kills_and_reaps_its_processes(no_leftover_processes: None) -> None:
    """Like trio.run_process: a cancelled server kills each tree and waits for the child."""
    from conftest import UNSANDBOXED

    from exec_server import Server, ServerConfig, serve_websocket
    from exec_server.sandbox import Sandbox

    config = ServerConfig(token="t" * 40, sandbox=UNSANDBOXED)
    popen = None
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                server = Server(config, Sandbox.create(config.sandbox))
                await nursery.start(server.run)
                listener = await nursery.start(serve_websocket, server, "127.0.0.1", 0)
                async with open_raw_client(f"ws://127.0.0.1:{listener.port}", config.token) as raw:
                    await raw.initialize()
                    pid = (await raw.start("orphan", ["sleep", "60"]))["pid"]
                    (session,) = server.sessions.values()
                    popen = session.processes["orphan"]._popen
                    nursery.cancel_scope.cancel()
        # Killed and reaped: not even a zombie is left for someone else to collect.
        assert popen.returncode is not None
        assert not psutil.pid_exists(pid)
    finally:
        # Without this, the leaked Popen's ResourceWarning would fail some later test.
        if popen is not None and popen.returncode is None:
            popen.kill()
            popen.wait()


# --- limits and concurrency ------------------------------------------------------------------


async def test_processes_per_session_limit(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(max_processes_per_session=2)
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            await raw.run("a", ["true"])
            await raw.run("b", ["true"])
            error = await raw.expect_error("process/start", {"processId": "c", "argv": ["true"]}, -32005)
            assert raw.events_of("c") == [] and "2" in error.message
            # Releasing a closed process frees its slot.
            await raw.call("process/release", {"processId": "a"})
            await raw.run("c", ["true"])


async def test_retain_bytes_over_the_total_cap(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(retain_total_bytes=1024 * 1024)
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            params = {"processId": "greedy", "argv": ["true"], "retainBytes": 2 * 1024 * 1024}
            await raw.expect_error("process/start", params, -32005)
            await raw.run("modest", ["true"], retainBytes=512 * 1024)


async def test_blocked_write_does_not_block_other_requests(client: RawClient) -> None:
    with trio.fail_after(10):
        # `sleep` never reads its stdin: 4 MiB cannot fit in the pipe, so the write waits.
        await client.start("deaf", ["sleep", "60"], pipeStdin=True)
        write_id = await client.send_request("process/write", {"processId": "deaf", "chunk": b64(b"z" * (4 * 1024 * 1024))})
        # Meanwhile the connection serves everything else, this process included.
        events = await client.run("other", ["echo", "unblocked"])
        assert output_of(events) == b"unblocked\n"
        assert [p["state"] for p in (await client.call("process/list"))["processes"] if p["processId"] == "deaf"] == ["running"]
        assert (await client.call("process/terminate", {"processId": "deaf"}))["running"] is True
        # The reader is gone: the pending write ends as stdinClosed, not hanging or failing.
        response = await client.response(write_id)
        assert response["result"]["status"] == "stdinClosed"
        await client.events_for("deaf")


async def test_big_stdin_round_trip(server: Any, no_leftover_processes: None) -> None:
    payload = hashlib.shake_256(b"stdin").digest(6 * 1024 * 1024)
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize(delivery="lossless")
            await raw.start("echo", ["cat"], pipeStdin=True)
            # Writes go in while output comes out: neither side may wait for the other.
            for offset in range(0, len(payload), 1024 * 1024):
                piece = payload[offset : offset + 1024 * 1024]
                status = await raw.call("process/write", {"processId": "echo", "chunk": b64(piece), "writeId": str(offset)})
                assert status["status"] == "accepted"
            await raw.call("process/write", {"processId": "echo", "eof": True})
            events = await raw.events_for("echo")
            assert hashlib.sha256(output_of(events)).digest() == hashlib.sha256(payload).digest()


async def test_write_id_retry_after_failed_write_keeps_the_outcome(client: RawClient) -> None:
    with trio.fail_after(10):
        # The child closes its stdin: a write fails with EPIPE inside the server.
        await client.start("closed-in", ["sh", "-c", "exec 0<&-; echo ready; sleep 60"], pipeStdin=True)
        await client.wait_output("closed-in", b"ready\n")
        try:
            params = {"processId": "closed-in", "chunk": b64(b"x"), "writeId": "w1"}
            first = await client.call("process/write", params)
            assert first["status"] == "stdinClosed"
            # A retry (the answer was lost, say) must not claim the bytes were delivered.
            assert await client.call("process/write", params) == first
        finally:
            await client.call("process/terminate", {"processId": "closed-in", "graceMs": 100})
            await client.events_for("closed-in")


async def test_concurrent_exits_under_default_sandbox(start_server: Any, no_leftover_processes: None) -> None:
    """The server's defaults (readOnly sandbox, denials from audit where available) with
    many commands ending at once: every one gets exited and closed, and the server lives."""
    from exec_server.sandbox import SandboxSettings

    with trio.fail_after(30):
        server = await start_server(sandbox=SandboxSettings())
        async with open_raw_client(server.url, server.token) as raw:
            init = await raw.initialize()
            if init["capabilities"]["sandbox"].get("denialSource") != "audit":
                pytest.skip("denials do not come from the kernel audit here")
            # Rounds of simultaneous exits: any two denial reports in flight at once collide.
            for n in range(48):
                await raw.send_request("process/start", {"processId": f"t{n}", "argv": ["true"]})
            for n in range(48):
                events = await raw.events_for(f"t{n}")
                assert exited_of(events)["exitCode"] == 0
            assert (await raw.call("process/list"))["processes"]


async def test_binary_output_frames_when_negotiated(server: Any, no_leftover_processes: None, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 2048 + b"\x00end"
    (tmp_path / "blob").write_bytes(payload)
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            result = await raw.initialize(binaryOutput=True, delivery="lossless")
            assert result["capabilities"]["binaryOutput"] is True
            before = len(raw.log)
            events = await raw.run("bin", ["sh", "-c", 'cat "$1"; printf err >&2', "sh", str(tmp_path / "blob")])
            assert output_of(events) == payload and output_of(events, "stderr") == b"err"
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            # Output came as binary frames (rawclient marks them without "jsonrpc"); the rest stays JSON text.
            outputs = [m for m in raw.log[before:] if m.get("method") == "process/output"]
            assert outputs and all("jsonrpc" not in m for m in outputs)
            others = [m for m in raw.log[before:] if m.get("method") != "process/output"]
            assert all(m.get("jsonrpc") == "2.0" for m in others)
