"""``tty: true`` on the server (issue 13): a pseudo-terminal as the command's controlling
terminal, through a real server and the raw client, with real processes and the real sandbox."""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import psutil
import pytest
import trio

from exec_server.sandbox import SandboxSettings, find_launcher
from protocol import SandboxMode
from test_sandbox_view import TEST_USER, _user_exists, serve_as_the_test_user
from rawclient import (  # noqa: F401  (fixtures are used by name)
    Event,
    PidWatch,
    RawClient,
    client,
    is_gone,
    no_leftover_processes,
    open_raw_client,
    output_of,
)

PY = sys.executable


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def exited_of(events: list[Event]) -> dict[str, Any]:
    (exited,) = [e.params for e in events if e.kind == "exited"]
    return exited


def streams_of(events: list[Event]) -> set[str]:
    return {e.params["stream"] for e in events if e.kind == "output"}


async def type_(client: RawClient, process_id: str, data: bytes, **extra: Any) -> None:
    result = await client.call("process/write", {"processId": process_id, "chunk": b64(data), **extra})
    assert result["status"] == "accepted", result


# --- unsandboxed ----------------------------------------------------------------------------


async def test_the_command_has_a_terminal_on_stdin_and_stdout_and_output_is_stream_pty(client: RawClient) -> None:
    with trio.fail_after(10):
        assert client.initialize_result is not None
        assert client.initialize_result["capabilities"]["pty"] is True
        events = await client.run("t", ["sh", "-c", "tty; test -t 0 && test -t 1 && test -t 2 && echo all-ttys"], tty=True)
    out = output_of(events, "pty")
    assert re.match(rb"/dev/pts/\d+\r\n", out), out
    assert b"all-ttys\r\n" in out
    assert streams_of(events) == {"pty"}
    assert exited_of(events)["exitCode"] == 0
    assert [e.kind for e in events][-2:] == ["exited", "closed"]
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_exit_code_propagates_and_stdin_takes_process_write(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("r", ["sh", "-c", "read line; echo got:$line; exit 7"], tty=True)
        await type_(client, "r", b"hello\n")
        events = await client.events_for("r")
    out = output_of(events, "pty")
    assert b"hello\r\n" in out  # the terminal echoes what was typed
    assert b"got:hello\r\n" in out
    assert exited_of(events)["exitCode"] == 7


async def test_stty_size_is_the_start_size_and_a_resize_reaches_the_foreground_group_as_sigwinch(client: RawClient) -> None:
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGWINCH, lambda *_: print('winch', *os.get_terminal_size(0), flush=True))\n"
        "print('start', *os.get_terminal_size(0), flush=True)\n"
        "sys.stdin.readline()\n"
        "print('end', *os.get_terminal_size(0), flush=True)\n"
    )
    with trio.fail_after(10):
        await client.start("w", [PY, "-c", script], tty=True, size={"rows": 30, "cols": 100})
        await client.wait_output("w", b"start 100 30\r\n", "pty")
        assert await client.call("process/resize", {"processId": "w", "rows": 50, "cols": 132}) == {}
        await client.wait_output("w", b"winch 132 50\r\n", "pty")
        await type_(client, "w", b"\n")
        events = await client.events_for("w")
    assert b"end 132 50\r\n" in output_of(events, "pty")
    assert exited_of(events)["exitCode"] == 0


async def test_stty_size_without_a_size_is_24_by_80(client: RawClient) -> None:
    with trio.fail_after(10):
        events = await client.run("s", ["stty", "size"], tty=True)
    assert output_of(events, "pty") == b"24 80\r\n"


async def test_resize_is_refused_for_a_pipe_process_and_an_unknown_one(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.run("pipes", ["true"])
        error = await client.expect_error("process/resize", {"processId": "pipes", "rows": 10, "cols": 10}, -32602)
        assert "has no terminal" in error.message
        await client.expect_error("process/resize", {"processId": "nope", "rows": 10, "cols": 10}, -32001)
        await client.expect_error("process/resize", {"processId": "pipes", "rows": 0, "cols": 10}, -32602)
        await client.expect_error("process/resize", {"processId": "pipes", "rows": 10, "cols": 10001}, -32602)
        await client.expect_error("process/start", {"processId": "big", "argv": ["true"], "tty": True, "size": {"rows": 1, "cols": 0}}, -32602)
        error = await client.expect_error("process/start", {"processId": "sz", "argv": ["true"], "size": {"rows": 9, "cols": 9}}, -32602)
        assert "size needs tty: true" in error.message
        # A closed tty process: nothing to resize, and no error either (a late SIGWINCH).
        await client.run("gone", ["true"], tty=True)
        assert await client.call("process/resize", {"processId": "gone", "rows": 10, "cols": 10}) == {}


BASH_ENV: Any = {"PS1": "PROMPT> ", "TERM": "dumb", "HISTFILE": "/dev/null"}


async def test_an_interactive_bash_has_job_control_and_computes(client: RawClient) -> None:
    with trio.fail_after(15):
        await client.start("sh", ["bash", "--norc", "--noprofile", "-i"], tty=True, env=BASH_ENV)
        await client.wait_output("sh", b"PROMPT> ", "pty")
        await type_(client, "sh", b"echo $((6*7))\n")
        await client.wait_output("sh", b"\r\n42\r\n", "pty")
        await type_(client, "sh", b"exit 3\n")
        events = await client.events_for("sh")
    out = output_of(events, "pty")
    assert b"no job control" not in out and b"cannot set terminal process group" not in out, out
    assert exited_of(events)["exitCode"] == 3


async def test_a_python_repl_reads_and_prints_through_the_terminal(client: RawClient) -> None:
    with trio.fail_after(15):
        await client.start("py", [PY, "-i", "-q"], tty=True, env={"PYTHONSTARTUP": "", "TERM": "dumb"})
        await client.wait_output("py", b">>> ", "pty")
        await type_(client, "py", b"6 * 7\n")
        await client.wait_output("py", b"\r\n42\r\n>>> ", "pty")
        await type_(client, "py", b"", eof=True)  # ^D at the prompt leaves the REPL
        events = await client.events_for("py")
    assert exited_of(events)["exitCode"] == 0


async def _wait_for_child(client: RawClient, process_id: str, name: str) -> int:
    """The pid of the command's descendant called ``name`` (polls /proc: there is no event for it)."""
    pid = next(p["pid"] for p in (await client.call("process/list"))["processes"] if p["processId"] == process_id)
    while True:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if child.name() == name:
                    return child.pid
            except psutil.Error:
                continue
        await trio.sleep(0.02)


async def test_interrupt_reaches_the_foreground_job_and_the_shell_returns_to_its_prompt(client: RawClient) -> None:
    with trio.fail_after(15):  # well under the 30 s of the sleep
        await client.start("sh", ["bash", "--norc", "--noprofile", "-i"], tty=True, env=BASH_ENV)
        await client.wait_output("sh", b"PROMPT> ", "pty")
        await type_(client, "sh", b"sleep 30\n")
        sleeper = await _wait_for_child(client, "sh", "sleep")
        assert os.getpgid(sleeper) != os.getpgid(next(p['pid'] for p in (await client.call('process/list'))['processes']))
        result = await client.call("process/signal", {"processId": "sh", "signal": "interrupt"})
        assert result["delivered"] is True
        await type_(client, "sh", b"echo status=$?\n")
        await client.wait_output("sh", b"status=130\r\n", "pty")
        await type_(client, "sh", b"exit\n")
        events = await client.events_for("sh")
    assert exited_of(events)["exitCode"] == 0  # `exit` returns the status of the echo


async def test_eof_ends_cat_after_a_partial_line_and_at_the_start_of_one(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("partial", ["cat"], tty=True)
        await type_(client, "partial", b"abc", eof=True)
        events = await client.events_for("partial")
        await client.start("line", ["cat"], tty=True)
        await type_(client, "line", b"one\n")
        await client.wait_output("line", b"one\r\none\r\n", "pty")  # the echo, then cat's copy
        await type_(client, "line", b"", eof=True)
        line_events = await client.events_for("line")
    assert output_of(events, "pty") == b"abcabc"  # the echo of "abc", then cat's copy
    assert exited_of(events)["exitCode"] == 0
    assert exited_of(line_events)["exitCode"] == 0


async def test_the_line_discipline_turns_newlines_into_crlf_and_raw_mode_is_binary_safe(client: RawClient) -> None:
    size = 10 * 1024 * 1024
    script = (
        "import sys, tty\n"
        "tty.setraw(0)\n"  # no \n -> \r\n, no echo, no signal characters
        f"data = bytes(range(256)) * ({size} // 256)\n"
        "sys.stdout.buffer.write(data)\n"
        "sys.stdout.flush()\n"
    )
    with trio.fail_after(60):
        cooked = await client.run("cooked", ["printf", "a\\nb\\n"], tty=True)
        events = await client.run("raw", [PY, "-c", script], tty=True)
    assert output_of(cooked, "pty") == b"a\r\nb\r\n"
    out = output_of(events, "pty")
    assert len(out) == size and out == bytes(range(256)) * (size // 256)
    assert exited_of(events)["exitCode"] == 0


async def test_hangup_reaches_the_shell_behind_the_foreground_job_and_a_timeout_kills_the_tree(client: RawClient) -> None:
    with trio.fail_after(15):
        await client.start("sh", ["bash", "--norc", "--noprofile", "-i"], tty=True, env=BASH_ENV)
        await client.wait_output("sh", b"PROMPT> ", "pty")
        await type_(client, "sh", b"sleep 30\n")
        await _wait_for_child(client, "sh", "sleep")
        assert (await client.call("process/signal", {"processId": "sh", "signal": "hangup"}))["delivered"] is True
        hung_up = exited_of(await client.events_for("sh"))
        timed = exited_of(await client.run("slow", ["sh", "-c", "sleep 30"], tty=True, timeoutMs=300))
    assert hung_up["signal"] == "SIGHUP", hung_up
    assert timed["timedOut"] is True and timed["signal"] == "SIGKILL", timed


async def test_terminate_kills_an_interactive_shell_that_ignores_sigterm_after_the_grace(client: RawClient) -> None:
    with trio.fail_after(15):
        await client.start("sh", ["bash", "--norc", "--noprofile", "-i"], tty=True, env=BASH_ENV)
        await client.wait_output("sh", b"PROMPT> ", "pty")
        assert (await client.call("process/terminate", {"processId": "sh", "graceMs": 200}))["running"] is True
        exited = exited_of(await client.events_for("sh"))
    assert exited["signal"] == "SIGKILL", exited  # an interactive bash ignores SIGTERM


async def test_binary_output_frames_carry_the_pty_stream(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize(binaryOutput=True)
            events = await raw.run("bin", ["printf", "x"], tty=True)
    assert output_of(events, "pty") == b"x"


# --- slow consumers: the same delivery guarantees as pipes ----------------------------------

FLOOD_BYTES: Final = 8 * 1024 * 1024


def _raw_flood(size: int) -> list[str]:
    """Wait for a line, then write ``size`` bytes in raw mode (binary-safe, no echo)."""
    script = (
        "import sys, tty\n"
        "tty.setraw(0)\n"  # TCSAFLUSH: input typed before this is discarded, hence "ready"
        "sys.stdout.buffer.write(b'ready')\n"
        "sys.stdout.flush()\n"
        "sys.stdin.buffer.read(1)\n"
        f"sys.stdout.buffer.write(bytes(range(256)) * ({size} // 256))\n"
        "sys.stdout.flush()\n"
    )
    return [PY, "-c", script]


async def _wait_until_writes_stall(pid: int) -> int:
    """Poll the producer's written-bytes counter (wchar) until it stands still for 0.5 s;
    only measures how far it got (see tests/test_delivery.py)."""

    def written() -> int:
        with open(f"/proc/{pid}/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))

    last, since = written(), trio.current_time()
    while trio.current_time() - since < 0.5:
        await trio.sleep(0.05)
        now = written()
        if now != last:
            last, since = now, trio.current_time()
    return last


@pytest.mark.parametrize("delivery", ["bestEffort", "lossless"])
async def test_a_slow_consumer_gets_the_pipe_guarantees(start_server: Any, delivery: str, no_leftover_processes: None) -> None:
    """bestEffort: pushes may be dropped while the client does not read, the seq gaps are
    repaired by process/read, byte-exact. lossless: nothing is dropped, the terminal (and the
    command writing to it) waits for the client."""
    expected = b"ready" + bytes(range(256)) * (FLOOD_BYTES // 256)
    # A queue far smaller than the flood: bestEffort must drop, lossless must hold the command.
    server = await start_server(outbound_queue_bytes=256 * 1024, outbound_queue_messages=64)
    with trio.fail_after(60):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize(delivery=delivery)
            pid = (await raw.start("flood", _raw_flood(FLOOD_BYTES), tty=True, retainBytes=2 * FLOOD_BYTES))["pid"]
            await raw.wait_output("flood", b"ready", "pty")
            # The writer itself (below the launcher when the command runs in a PID namespace).
            producer = ([pid] + [c.pid for c in psutil.Process(pid).children(recursive=True) if c.name().startswith("python")])[-1]
            watch = PidWatch(pid)
            raw.pause()
            await raw.send_request("process/write", {"processId": "flood", "chunk": b64(b"g")})
            if delivery == "bestEffort":
                await watch.wait_exited(timeout=30)  # it wrote everything while nobody read
            else:
                # Held by the backpressure: its writes stop short of the flood, it keeps running.
                held_at = await _wait_until_writes_stall(producer)
                assert 0 < held_at < FLOOD_BYTES and not is_gone(producer), held_at
            raw.resume()
            await watch.wait_exited(timeout=30)
            events = await raw.events_for("flood")
            seqs = sorted(e.seq for e in events)
            pushed = {e.seq: e.data for e in events if e.kind == "output"}
            missing = [seq for seq in range(1, seqs[-1]) if seq not in pushed and seq not in {e.seq for e in events if e.kind != "output"}]
            repaired: dict[int, bytes] = {}
            after = 0
            while missing:
                result = await raw.call("process/read", {"processId": "flood", "afterSeq": after})
                for chunk in result["chunks"]:
                    assert chunk["stream"] == "pty"
                    repaired[chunk["seq"]] = base64.b64decode(chunk["chunk"])
                after = result["nextSeq"] - 1
                if result["closed"] and after >= seqs[-1] - 1:
                    break
    if delivery == "lossless":
        assert seqs == list(range(1, len(seqs) + 1)), "lossless dropped a push"
    else:
        assert missing, "the flood fit the queue: nothing was dropped, nothing tested"
    out = b"".join((pushed | repaired)[seq] for seq in sorted(pushed | repaired))
    assert out == expected


# --- sandboxed ------------------------------------------------------------------------------


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="exec-pty-ws-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host_pty() -> Iterator[tuple[int, str]]:
    """A terminal of the host's (another session's, as far as a command is concerned): its
    master and slave path. Two are opened so the one kept is never /dev/pts/0, which is also
    the name of a sandboxed command's own terminal."""
    pairs = [os.openpty() for _ in range(2)]
    names = [os.ttyname(slave) for _master, slave in pairs]
    keep = max(range(2), key=lambda i: int(names[i].rsplit("/", 1)[1]))
    for i, (master, slave) in enumerate(pairs):
        if i != keep:
            os.close(slave)
            os.close(master)
    master, slave = pairs[keep]
    os.set_blocking(master, False)
    termios_attrs = termios.tcgetattr(slave)
    termios_attrs[3] &= ~termios.ECHO  # what the master reads back is then only what was written to the slave
    termios.tcsetattr(slave, termios.TCSANOW, termios_attrs)
    # Keystrokes waiting to be read: on the host's /dev a root command could take them.
    os.write(master, b"secret-keystrokes\n")
    yield master, names[keep]
    os.close(slave)
    os.close(master)


def _host_pty_received(master: int) -> bytes:
    try:
        return os.read(master, 65536)
    except (BlockingIOError, OSError):
        return b""


@pytest.mark.parametrize("audit", ["auto", "off"], ids=["kernel-audit", "heuristic"])
async def test_a_sandboxed_tty_session_has_its_own_devpts_and_its_denials_are_reported(
    start_server: Any, workspace: Path, audit: str, no_leftover_processes: None
) -> None:
    server = await start_server(sandbox=SandboxSettings(default_mode=SandboxMode.WORKSPACE_WRITE, audit_denials=audit))
    if not server.server.sandbox.available:
        pytest.skip(f"no kernel sandbox here: {server.server.sandbox.unavailable_reason}")
    # /dev/tty is the command's own terminal, ioctls included (less, vi, sudo reopen it).
    script = "tty; ls -1 /dev/pts; test -t 0 && test -t 1 && echo ttys; stty -F /dev/tty size; touch /etc/x"
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            result = await raw.start("boxed", ["sh", "-c", script], tty=True, cwd=str(workspace))
            events = await raw.events_for("boxed")
            piped = exited_of(await raw.run("piped", ["touch", "/etc/x"], cwd=str(workspace)))
    assert result["sandboxType"] == "landlock"
    out = output_of(events, "pty")
    assert out.startswith(b"/dev/pts/0\r\n0\r\nptmx\r\nttys\r\n24 80\r\n"), out
    assert b"/etc/x" in out and not os.path.exists("/etc/x")
    exited = exited_of(events)
    assert exited["exitCode"] != 0 and exited["sandboxDenied"] is True, exited
    expected_source = server.server.sandbox.capabilities()["denialSource"]
    assert exited["sandboxDeniedSource"] == expected_source
    # Reported as in pipe mode. The kernel-audit source does not read output at all; the
    # heuristic reads the terminal's output (stdout and stderr are one stream there).
    assert exited["denials"] == piped["denials"] and piped["sandboxDenied"] is True, (exited, piped)
    assert [d["target"] for d in exited["denials"]] == ["/etc/x"], exited["denials"]


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "pipes"])
async def test_a_sandboxed_command_cannot_reach_a_host_terminal(
    start_server: Any, workspace: Path, host_pty: tuple[int, str], tty: bool, no_leftover_processes: None
) -> None:
    """The view's /dev is its own: no host pty (read or write, root included), no console,
    no disk; only the memory devices, /dev/tty and its own devpts."""
    master, name = host_pty
    server = await start_server(sandbox=SandboxSettings(default_mode=SandboxMode.READ_ONLY, audit_denials="off"))
    if not server.server.sandbox.available:
        pytest.skip(f"no kernel sandbox here: {server.server.sandbox.unavailable_reason}")
    script = f"ls -1 /dev; echo intruder > {name}; cat {name}; ls -1 /dev/console /dev/tty1 /dev/vda; exit 0"
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            events = await raw.run("probe", ["sh", "-c", script], tty=tty, cwd=str(workspace))
    out = output_of(events, "pty") + output_of(events, "stdout") + output_of(events, "stderr")
    listing = out.split(b"intruder")[0] if b"intruder" in out else out
    names = set(listing.replace(b"\r", b"").split(b"\n")[:13])
    assert names >= {b"null", b"zero", b"tty", b"pts", b"ptmx", b"shm", b"urandom"}, out
    assert not names & {b"console", b"tty1", b"vda", b"kmsg"}, out
    assert f"cannot create {name}".encode() in out, out  # no such file, or devpts refuses a create
    assert f"cat: {name}: No such file or directory".encode() in out, out
    assert out.count(b"No such file or directory") == 4, out  # the read and the three ls
    assert b"secret" not in out
    assert _host_pty_received(master) == b""


# --- a non-root server ----------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the server as the test user")
async def test_a_non_root_server_gives_terminals_sandboxed_and_not(no_leftover_processes: None) -> None:
    if not _user_exists(TEST_USER) or not os.path.exists("/usr/bin/python3"):
        pytest.skip(f"needs a user {TEST_USER!r} (useradd -m {TEST_USER}) and /usr/bin/python3")
    entry = pwd.getpwnam(TEST_USER)
    home = Path(entry.pw_dir)
    with tempfile.TemporaryDirectory(prefix="exec-pty-user-ws-") as name:
        workspace = Path(name)
        os.chown(workspace, entry.pw_uid, entry.pw_gid)
        with trio.fail_after(120):
            async with serve_as_the_test_user(home, "--allow-unsandboxed") as (url, token, _), open_raw_client(url, token) as raw:
                init = await raw.initialize()
                assert init["capabilities"]["pty"] is True
                script = "tty; id -u; stty size; touch ok && echo wrote; touch /etc/x"
                boxed = await raw.run("boxed", ["sh", "-c", script], tty=True, cwd=str(workspace), size={"rows": 40, "cols": 120})
                free = await raw.run(
                    "free", ["sh", "-c", "tty; id -u; test -t 0 && echo tty0"], tty=True, cwd=str(workspace), sandbox={"mode": "none"}
                )
                await raw.start("sh", ["bash", "--norc", "--noprofile", "-i"], tty=True, cwd=str(workspace), env=BASH_ENV)
                await raw.wait_output("sh", b"PROMPT> ", "pty")
                await type_(raw, "sh", b"echo $((6*7))\n")
                await raw.wait_output("sh", b"\r\n42\r\n", "pty")
                await type_(raw, "sh", b"", eof=True)  # ^D at an empty prompt: the shell exits
                shell = await raw.events_for("sh")
    out = output_of(boxed, "pty")
    assert out.startswith(f"/dev/pts/0\r\n{entry.pw_uid}\r\n40 120\r\n".encode()), out
    assert b"wrote\r\n" in out  # the workspace is writable
    assert exited_of(boxed)["sandboxDenied"] is True
    assert [d["target"] for d in exited_of(boxed)["denials"]] == ["/etc/x"]
    free_out = output_of(free, "pty")
    assert re.match(rf"/dev/pts/\d+\r\n{entry.pw_uid}\r\ntty0\r\n".encode(), free_out), free_out
    assert b"no job control" not in output_of(shell, "pty")
    assert exited_of(shell)["exitCode"] == 0


# --- the launcher's side ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pty-size", "0:80"], "bad value for --pty-size"),
        (["--pty-size", "24x80"], "--pty-size wants ROWS:COLS"),
        ([], "--pty-fd needs --pty-size"),
    ],
)
def test_a_bad_terminal_request_fails_the_launch_before_anything_runs(flags: list[str], message: str) -> None:
    """Exit 125 with a one-line reason, and the server's end of the channel sees end of file
    (no master ever comes), so the process still reaches exited and closed."""
    launcher = find_launcher()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        argv = [launcher.path, "--pty-fd", str(theirs.fileno()), *flags, "--limits-only", "--", "true"]
        result = subprocess.run(argv, pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=10, check=False)
        theirs.close()
        ours.settimeout(10)
        assert socket.recv_fds(ours, 1, 1)[:2] == (b"", [])
    assert result.returncode == 125, result
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
