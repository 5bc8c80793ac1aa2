"""Our client against the real ``codex exec-server`` (Codex CLI 0.169), and its dialect layer.

The peer is the real binary (``codex_peer.codex_exec_server``: npm-installed into a cache,
no token). The client detects the dialect from the ``initialize`` answer (no
``protocolVersion``) and must give the same exact terminal records it gives against our
own server — from pushed events alone: every ``process/read`` the client puts on the wire
is counted (``wire``), and the in-order path must send none.

The sans-io tests at the end drive the dialect and the assembler with frames recorded from
that server (``RECORDED``), for what a live peer will not do on demand: a gap, an
eviction, an exited event without ``sandboxDenied`` (older Codex).
"""

from __future__ import annotations

import errno
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

import exec_client
import protocol as p
from exec_client import _codex_dialect as _dialect
from exec_client._core import Answer, Event, RequestTracker
from protocol import _codex as codex

from codex_peer import codex_exec_server
from conftest import RunningServer
from rawclient import no_leftover_processes  # noqa: F401  (fixture used by name)
from test_cli import exec_client as run_cli
from test_client_server import DropProxy

TIMEOUT: Final = 60.0
TWENTY_MB: Final = 20 * 1024 * 1024


@pytest.fixture
async def codex_url(tmp_path: Path, no_leftover_processes: None) -> AsyncIterator[str]:
    async with codex_exec_server(tmp_path / "codex-home") as url:
        yield url


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The method of every request the Codex dialect puts on the wire, in order."""
    sent: list[str] = []
    encode = _dialect.CodexDialect.encode_request

    def counting(self: _dialect.CodexDialect, request_id: int, params: Any, method: str) -> str:
        frame = encode(self, request_id, params, method)
        sent.append(json.loads(frame)["method"])
        return frame

    monkeypatch.setattr(_dialect.CodexDialect, "encode_request", counting)
    return sent


def pushed(record: p.TerminalRecord, **fields: Any) -> None:
    """``record`` is exact, complete and came from pushed events alone."""
    expected = {
        "signal": None,
        "timed_out": False,
        "sandbox_denied": False,
        "output_lost": False,
        "stdout_omitted_bytes": 0,
        "stderr_omitted_bytes": 0,
        "failure": None,
        "completion": p.Completion.PUSHED,
        "read_calls": 0,
        **fields,
    }
    actual = {name: getattr(record, name) for name in expected}
    assert actual == expected, {name: (actual[name], expected[name]) for name in expected if actual[name] != expected[name]}


# --- against the real codex exec-server -------------------------------------------------------


async def test_the_dialect_is_detected_from_initialize(codex_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:  # no token: Codex has none
            info = client.info
    assert client.dialect == "codex"
    assert (info.server_name, info.server_version, info.protocol_version) == ("codex exec-server", "0.169.0", 0)
    # Not advertised by Codex, but true of it: it pushes every event and never drops one.
    assert (info.push_events, info.lossless, info.release, info.binary_output) == (True, True, False, False)
    assert info.cwd is not None and info.cwd.startswith("/")


@pytest.mark.parametrize("code", [0, 3])
async def test_output_and_exit_codes_are_exact_from_pushes(codex_url: str, wire: list[str], code: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            record = await client.run(["sh", "-c", f"printf 'out\\n'; printf 'err' >&2; exit {code}"])
    pushed(record, exit_code=code, stdout=b"out\n", stderr=b"err")
    assert "process/read" not in wire
    assert wire.count("process/start") == 1


async def test_a_signal_death_is_exit_code_128_plus_n(codex_url: str, wire: list[str]) -> None:
    # Codex reports a signal death as its shell would: 128+n, with no separate signal.
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            record = await client.run(["sh", "-c", "printf before; kill -KILL $$"])
    pushed(record, exit_code=128 + 9, stdout=b"before", stderr=b"")
    assert "process/read" not in wire


async def test_a_grandchild_holding_the_pipe_after_the_parent_exits(codex_url: str, wire: list[str]) -> None:
    # The exit comes first; the record waits for closed, i.e. for the grandchild's output.
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            # (A background job's stdin is /dev/null in sh: the grandchild reads the pipe on fd 3.)
            handle = await client.start(
                ["sh", "-c", "exec 3<&0; (read line <&3; echo late $line) & echo early"], pipe_stdin=True
            )
            chunks = aiter(handle)
            assert (await anext(chunks)).chunk == b"early\n"
            await handle.write(b"go\n")  # only the grandchild reads it: the parent is gone
            record = await handle.wait()
    pushed(record, exit_code=0, stdout=b"early\nlate go\n", stderr=b"")
    assert "process/read" not in wire


async def test_stdin_writes_reach_the_command(codex_url: str, wire: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            handle = await client.start(["sh", "-c", "read a; echo got $a; read b; echo got $b"], pipe_stdin=True)
            assert await handle.write("one\n") is p.WriteStatus.ACCEPTED
            assert await handle.write(b"two\n") is p.WriteStatus.ACCEPTED
            record = await handle.wait()
    pushed(record, exit_code=0, stdout=b"got one\ngot two\n", stderr=b"")
    assert wire.count("process/write") == 2 and "process/read" not in wire


async def test_a_tty_command_gets_codexs_terminal(codex_url: str, wire: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            handle = await client.start(["sh", "-c", "tty; test -t 0 && test -t 1 && echo both"], tty=True)
            record = await handle.wait()
            with pytest.raises(exec_client.NotSupported):
                await handle.resize(30, 100)
    assert record.exit_code == 0 and record.stderr == b"", record
    assert re.fullmatch(rb"/dev/pts/\d+\r\nboth\r\n", record.stdout), record.stdout
    assert "process/read" not in wire


async def test_what_codex_cannot_do_is_refused_before_anything_starts(codex_url: str, wire: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            # Codex has no way to close stdin: ``cat`` would never see EOF.
            with pytest.raises(exec_client.NotSupported, match="cannot close a command's stdin"):
                await client.run(["cat"], stdin=b"data")
            with pytest.raises(exec_client.NotSupported, match="no command timeout"):
                await client.run(["true"], timeout=5)
            with pytest.raises(exec_client.NotSupported, match="process/list"):
                await client.list()
            handle = await client.start(["sleep", "30"])
            with pytest.raises(exec_client.NotSupported, match="signal 'hangup'"):
                await handle.signal("hangup")
            assert await handle.terminate()
            await handle.wait()
    assert wire.count("process/start") == 1  # only the sleep


async def test_our_sandbox_policies_run_under_codexs_sandbox(codex_url: str, tmp_path: Path) -> None:
    workspace, extra, outside = tmp_path / "ws", tmp_path / "extra", tmp_path / "outside"
    for path in (workspace / ".git", extra, outside):
        path.mkdir(parents=True)
    script = "for f in ws/a ws/.git/b extra/c outside/d; do touch $f 2>/dev/null && echo $f; done; touch outside/e"
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            read_only = await client.run(["sh", "-c", script], cwd=tmp_path, sandbox="readOnly")
            workspace_write = await client.run(
                ["sh", "-c", script.replace(" ws/", " ./").replace("extra/", "../extra/").replace("outside/", "../outside/")],
                cwd=workspace,
                sandbox=p.SandboxPolicy(mode=p.SandboxMode.WORKSPACE_WRITE, writable_roots=(str(extra),)),
            )
            handle = await client.start(["true"], sandbox="readOnly")
            await handle.wait()
    assert (read_only.exit_code, read_only.sandbox_denied, read_only.stdout) == (1, True, b"")
    assert b"Read-only file system" in read_only.stderr
    # cwd and the writable root are writable; .git (our default carve-out) and the rest are not.
    assert (workspace_write.exit_code, workspace_write.sandbox_denied) == (1, True)
    assert workspace_write.stdout == b"./a\n../extra/c\n"
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == ["a", "c"]
    assert handle.sandbox_type == "linuxSeccomp"


async def test_terminate_kills_a_running_sleep(codex_url: str, wire: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            handle = await client.start(["sh", "-c", "echo started; exec sleep 30"])
            assert (await anext(aiter(handle))).chunk == b"started\n"
            assert await handle.terminate() is True
            record = await handle.wait()
            assert await handle.terminate() is False  # already gone
    # Codex's terminate is a SIGKILL of the process group, without grace.
    pushed(record, exit_code=128 + 9, stdout=b"started\n", stderr=b"")
    assert "process/read" not in wire


async def test_interrupt_and_kill_signals(codex_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            handle = await client.start(["sh", "-c", "trap 'echo int; exit 5' INT; echo ready; while :; do sleep 0.05; done"])
            assert (await anext(aiter(handle))).chunk == b"ready\n"
            assert await handle.signal("interrupt") is True
            interrupted = await handle.wait()
            handle = await client.start(["sleep", "30"])
            assert await handle.signal("kill") is True  # sent as process/terminate
            killed = await handle.wait()
    assert (interrupted.exit_code, interrupted.stdout) == (5, b"ready\nint\n")
    assert killed.exit_code == 128 + 9


async def test_a_20_mb_stream_is_byte_exact(codex_url: str, wire: list[str]) -> None:
    pattern = "bytes(range(256)) * 4096"  # 1 MiB that is not all one byte
    program = f"import sys\nfor _ in range(20): sys.stdout.buffer.write({pattern})\nsys.stderr.write('done')"
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            record = await client.run([sys.executable, "-c", program])
    assert len(record.stdout) == TWENTY_MB
    assert record.stdout == bytes(range(256)) * 4096 * 20
    pushed(record, exit_code=0, stdout=record.stdout, stderr=b"done")
    assert "process/read" not in wire


async def test_spawn_failure_and_a_duplicate_process_id_map_to_our_errors(codex_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            with pytest.raises(exec_client.SpawnFailed) as failed:
                await client.run(["/nonexistent/program"])
            await (await client.start(["true"], process_id="twice")).wait()
            # Codex keeps an exited process's id taken (for 30 s): its -32600 is our -32002.
            with pytest.raises(exec_client.DuplicateProcess, match="already exists"):
                await client.start(["true"], process_id="twice")
    assert failed.value.errno == errno.ENOENT


async def test_relative_and_default_cwd_resolve_against_the_servers(codex_url: str, tmp_path: Path) -> None:
    (tmp_path / "sub dir").mkdir()
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            server_cwd = client.info.cwd
            here = await client.run(["pwd"])
            there = await client.run(["pwd"], cwd=tmp_path / "sub dir")
    assert here.stdout.decode().strip() == server_cwd
    assert there.stdout == f"{tmp_path / 'sub dir'}\n".encode()


async def test_env_is_added_to_the_servers_environment(codex_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            added = await client.run(["sh", "-c", 'echo "$MY_VAR:$CODEX_HOME"'], env={"MY_VAR": "v 1"})
            alone = await client.run(["/usr/bin/env"], env={"ONLY": "this"}, inherit_env=False)
    value, _, codex_home = added.stdout.decode().strip().partition(":")
    assert value == "v 1" and codex_home  # CODEX_HOME is the server's own variable
    assert alone.stdout == b"ONLY=this\n"


@attrs.define
class GatedProxy(DropProxy):
    """A ``DropProxy`` that holds every connection after the first until ``gate`` is set."""

    gate: trio.Event = attrs.Factory(trio.Event)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        if self.accepted:
            await self.gate.wait()
        await super()._handle(downstream)


async def _until_exists(path: Path) -> None:
    while not path.exists():  # bounded by the caller's fail_after
        await trio.sleep(0.01)


async def test_a_cut_connection_is_resumed_and_repaired_by_a_read(
    codex_url: str, wire: list[str], nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The second half is written while no connection is attached: Codex drops the events
    # then, so only a read on the resumed session can bring them back.
    proxy = await nursery.start(GatedProxy(int(codex_url.rsplit(":", 1)[1])).serve)
    go, done = tmp_path / "go", tmp_path / "done"
    script = f"printf first; while [ ! -e '{go}' ]; do sleep 0.01; done; printf second; touch '{done}'; exit 4"
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(f"ws://127.0.0.1:{proxy.port}") as client:
            handle = await client.start(["sh", "-c", script])
            chunks = aiter(handle)
            assert (await anext(chunks)).chunk == b"first"
            proxy.cut()
            go.touch()
            await _until_exists(done)
            proxy.gate.set()
            rest = [chunk.chunk async for chunk in chunks]
            record = await handle.wait()
            assert client.resumes == 1 and client.dialect == "codex"
    assert b"".join(rest) == b"second"
    assert (record.stdout, record.exit_code, record.failure, record.completion) == (
        b"firstsecond",
        4,
        None,
        p.Completion.RECOVERED,
    )
    assert record.read_calls >= 1 and wire.count("process/read") == record.read_calls
    assert proxy.accepted == 2


async def test_the_cli_runs_a_command_on_codex_exec_server(codex_url: str, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        done = await run_cli(["run", "--url", codex_url, "--no-token", "--", "echo", "hi"], home=tmp_path)
        failed = await run_cli(["run", "--url", codex_url, "--no-token", "--json", "--", "sh", "-c", "exit 3"], home=tmp_path)
        missing = await run_cli(["run", "--url", codex_url, "--no-token", "--", "/nonexistent/x"], home=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hi\n", b"")
    assert failed.returncode == 3 and b'"completion": "pushed", "readCalls": 0' in failed.stdout
    assert missing.returncode == 127 and missing.stderr.count(b"\n") == 1



async def test_the_cli_does_not_forward_stdin_to_codex_unless_asked(codex_url: str, tmp_path: Path) -> None:
    # Codex cannot close a command's stdin: `cat` would wait forever after our EOF.
    with trio.fail_after(TIMEOUT):
        default = await run_cli(["run", "--url", codex_url, "--no-token", "--", "cat"], home=tmp_path, stdin=b"data")
        asked = await run_cli(
            ["run", "--url", codex_url, "--no-token", "--stdin", "--", "head", "-c", "4"], home=tmp_path, stdin=b"data"
        )
    assert (default.returncode, default.stdout, default.stderr) == (0, b"", b"")
    assert (asked.returncode, asked.stdout) == (0, b"data")


async def test_forcing_the_codex_dialect_sends_codexs_own_initialize(codex_url: str, wire: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url, dialect="codex") as client:
            record = await client.run(["echo", "forced"])
    assert wire[0] == "initialize"
    pushed(record, exit_code=0, stdout=b"forced\n", stderr=b"")


async def test_fs_requests_pass_through_unchanged(codex_url: str, tmp_path: Path) -> None:
    # The file layer sends fs/* through the connection's request path, in any dialect.
    (tmp_path / "f.txt").write_bytes(b"file data")
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(codex_url) as client:
            read = await client.call(codex.PathParams(path=codex.uri_from_path(str(tmp_path / "f.txt"))), "fs/readFile")
            with pytest.raises(exec_client.ServerError) as missing:
                await client.call(codex.PathParams(path=codex.uri_from_path(str(tmp_path / "nope"))), "fs/readFile")
    assert read == {"dataBase64": "ZmlsZSBkYXRh"}
    assert missing.value.code == p.ErrorCode.FILE_NOT_FOUND


async def test_codex_answers_the_keepalive_pings(codex_url: str) -> None:
    # A missing pong would count as a cut (and a resume): Codex's server must answer them.
    with trio.fail_after(TIMEOUT):
        # The command outlives the pong timeout by far: without pongs the client would resume.
        async with exec_client.open_client(codex_url, ping_interval=0.05, ping_timeout=1.0) as client:
            record = await client.run(["sleep", "3"])
            assert client.resumes == 0 and client.state is exec_client.ClientState.CONNECTED
    pushed(record, exit_code=0, stdout=b"", stderr=b"")


async def test_the_sync_client_speaks_the_dialect_too(codex_url: str) -> None:
    def sync() -> p.TerminalRecord:
        with exec_client.connect(codex_url) as client:
            assert client.info.dialect == "codex"
            return client.run("echo sync; exit 2")

    with trio.fail_after(TIMEOUT):
        record = await trio.to_thread.run_sync(sync)
    pushed(record, exit_code=2, stdout=b"sync\n", stderr=b"")


# --- our own server, unchanged -------------------------------------------------------------------


async def test_our_server_is_still_spoken_to_in_our_dialect(server: RunningServer) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(server.url, token=server.token) as client:
            record = await client.run(["sh", "-c", "echo ours; kill -TERM $$"])
            assert client.dialect == "exec-server" and client.info.cwd is None
    assert (record.exit_code, record.signal, record.stdout, record.completion) == (128 + 15, "SIGTERM", b"ours\n", "pushed")


async def test_a_duplicate_process_id_does_not_orphan_the_running_one(server: RunningServer) -> None:
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(server.url, token=server.token) as client:
            handle = await client.start(["sh", "-c", "read x; echo $x"], process_id="once", pipe_stdin=True)
            with pytest.raises(exec_client.DuplicateProcess, match="already running"):
                await client.start(["true"], process_id="once")
            await handle.write(b"still-tracked\n")
            await handle.close_stdin()
            record = await handle.wait()
    assert (record.exit_code, record.stdout, record.failure) == (0, b"still-tracked\n", None)


async def test_forced_codex_dialect_against_our_server_gives_the_same_record(server: RunningServer) -> None:
    # Our server speaks Codex's dialect to a client that initializes as Codex does: the two
    # halves of the dialect (exec_server/_codex.py and exec_client/_dialect.py) must agree.
    script = "printf out; printf err >&2; exit 3"
    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(server.url, token=server.token, dialect="codex") as client:
            assert client.dialect == "codex"
            as_codex = await client.run(["sh", "-c", script])
        async with exec_client.open_client(server.url, token=server.token) as client:
            ours = await client.run(["sh", "-c", script])
    pushed(as_codex, exit_code=3, stdout=b"out", stderr=b"err")
    assert (ours.exit_code, ours.stdout, ours.stderr, ours.completion) == (3, b"out", b"err", "pushed")


# --- the dialect, sans-io, on frames recorded from codex exec-server 0.169 ----------------------

RECORDED: Final = [
    '{"method":"process/output","params":{"processId":"p1","seq":1,"stream":"stderr","chunk":"ZXJyCg=="}}',
    '{"method":"process/output","params":{"processId":"p1","seq":2,"stream":"stdout","chunk":"b3V0Cg=="}}',
    '{"method":"process/exited","params":{"processId":"p1","seq":3,"exitCode":3,"sandboxDenied":false}}',
    '{"method":"process/closed","params":{"processId":"p1","seq":4}}',
]
RECORDED_READ: Final = {
    "chunks": [
        {"seq": 1, "stream": "stderr", "chunk": "ZXJyCg=="},
        {"seq": 2, "stream": "stdout", "chunk": "b3V0Cg=="},
    ],
    "nextSeq": 5,
    "exited": True,
    "exitCode": 3,
    "closed": True,
    "failure": None,
    "sandboxDenied": False,
}
DIALECT: Final = _dialect.CodexDialect("/srv")


def _events(frames: list[str]) -> list[p.ExitedEvent | p.OutputEvent | p.ClosedEvent]:
    tracker = RequestTracker(DIALECT)
    events = []
    for frame in frames:
        incoming = tracker.receive(frame)
        assert isinstance(incoming, Event)
        events.append(incoming.notification.params)
    return events


def _read(assembler: p.Assembler, action: p.Action, raw: dict[str, Any]) -> p.Progress:
    assert isinstance(action, p.NeedRead)
    params = p.ReadParams(process_id="p1", after_seq=action.after_seq, max_bytes=action.max_bytes, wait_ms=action.wait_ms)
    tracker = RequestTracker(DIALECT)
    request_id, frame = tracker.request(params)
    assert json.loads(frame)["params"] == {
        "processId": "p1",
        "afterSeq": action.after_seq,
        "maxBytes": action.max_bytes,
        "waitMs": action.wait_ms,
    }
    answer = tracker.receive(codex._dumps({"id": request_id, "result": raw}))
    assert isinstance(answer, Answer) and answer.error is None
    return assembler.read_result(answer.result)


def test_recorded_events_complete_a_record_without_a_read() -> None:
    assembler = p.Assembler("p1", ["sh"])
    progress = [assembler.event(event) for event in _events(RECORDED)]
    record = progress[-1].action
    assert isinstance(record, p.Complete)
    assert (record.record.stdout, record.record.stderr, record.record.exit_code) == (b"out\n", b"err\n", 3)
    assert (record.record.completion, record.record.read_calls, record.record.sandbox_denied) == ("pushed", 0, False)


@pytest.mark.parametrize(("in_order", "reads"), [(False, 0), (True, 1)])
def test_closed_before_exited_is_a_reorder_on_codex(in_order: bool, reads: int) -> None:
    # As seen from Codex 0.169 on a 20 MB stream: stderr and the exit overtaken, closed first.
    frames = [RECORDED[1], RECORDED[3], RECORDED[0], RECORDED[2]]
    assembler = p.Assembler("p1", ["sh"], in_order=in_order)
    first, behind_closed, *rest = [assembler.event(event) for event in _events(frames)]
    if in_order:  # our server: nothing follows closed, so the hole is a loss: read at once
        assert isinstance(behind_closed.action, p.NeedRead)
        done = _read(assembler, behind_closed.action, RECORDED_READ)
    else:  # Codex: wait (the gap grace) for the rest
        assert behind_closed.action == p.Wait(hole=True)
        done = rest[-1]
    assert isinstance(done.action, p.Complete)
    record = done.action.record
    assert (record.stdout, record.stderr, record.exit_code, record.read_calls) == (b"out\n", b"err\n", 3, reads)


def test_an_exited_without_sandbox_denied_costs_exactly_one_read() -> None:
    # An older Codex omits sandboxDenied; the read (which has it) supplies it.
    frames = [*RECORDED[:2], RECORDED[2].replace(',"sandboxDenied":false', ""), RECORDED[3]]
    assembler = p.Assembler("p1", ["sh"])
    progress = [assembler.event(event) for event in _events(frames)][-1]
    done = _read(assembler, progress.action, RECORDED_READ)
    assert isinstance(done.action, p.Complete)
    assert (done.action.record.sandbox_denied, done.action.record.read_calls) == (False, 1)
    assert done.action.record.completion == "pushed"  # the read only supplied sandboxDenied


def test_a_gap_is_repaired_from_codexs_read() -> None:
    assembler = p.Assembler("p1", ["sh"])
    for event in _events([RECORDED[1], *RECORDED[2:]]):  # seq 1 never arrived
        progress = assembler.event(event)
    done = _read(assembler, progress.action, RECORDED_READ)
    assert isinstance(done.action, p.Complete)
    record = done.action.record
    assert (record.stdout, record.stderr, record.exit_code, record.output_lost) == (b"out\n", b"err\n", 3, False)
    assert record.completion == "recovered"


def test_output_codex_evicted_is_reported_lost() -> None:
    # Codex keeps the newest 1 MiB: a read after seq 0 that starts at seq 3 lost 1 and 2.
    raw = codex.decode_read_result(
        {**RECORDED_READ, "chunks": [{"seq": 3, "stream": "stdout", "chunk": "eA=="}], "nextSeq": 6}, after_seq=0, max_bytes=None
    )
    assert raw.retained_from_seq == 3
    # ...but a gap the exit explains is no eviction.
    exit_first = codex.decode_read_result(
        {**RECORDED_READ, "chunks": [{"seq": 2, "stream": "stdout", "chunk": "eA=="}], "nextSeq": 4}, after_seq=0, max_bytes=None
    )
    assert exit_first.retained_from_seq == 1


def test_start_params_in_codexs_shape() -> None:
    request_id, frame = RequestTracker(DIALECT).request(
        p.StartParams(process_id="p1", argv=("ls",), cwd="rel dir", env={"A": "1"}, pipe_stdin=True)
    )
    assert json.loads(frame)["params"] == {
        "processId": "p1",
        "argv": ["ls"],
        "cwd": "file:///srv/rel%20dir",
        "envPolicy": {"inherit": "all", "ignoreDefaultExcludes": True, "exclude": [], "set": {}, "includeOnly": []},
        "env": {"A": "1"},
        "tty": False,
        "pipeStdin": True,
        "arg0": None,
        "sandbox": None,
    }
    _, alone = RequestTracker(DIALECT).request(p.StartParams(process_id="p2", argv=("ls",), cwd="/x", inherit_env=False))
    assert json.loads(alone)["params"]["envPolicy"] is None


@pytest.mark.parametrize(
    ("method", "code", "message", "error", "data"),
    [
        ("process/read", -32600, "unknown process id p9", exec_client.UnknownProcess, None),
        ("process/start", -32600, "process p1 already exists", exec_client.DuplicateProcess, None),
        ("process/start", -32603, "No such file or directory (os error 2)", exec_client.SpawnFailed, {"errno": 2, "strerror": "No such file or directory"}),
        ("fs/readFile", -32004, "No such file or directory (os error 2)", exec_client.ServerError, None),
        ("process/start", -32602, "invalid URI: relative URL without a base", exec_client.InvalidParams, None),
    ],
)
def test_codex_error_codes_map_onto_ours(method: str, code: int, message: str, error: type, data: Any) -> None:
    exc = DIALECT.error(method, code, message, None)
    assert type(exc) is error and exc.message == message and exc.data == data
    if code == -32004:  # Codex's "not found" is our FILE_NOT_FOUND, never our -32004 (shutting down)
        assert exc.code == p.ErrorCode.FILE_NOT_FOUND


def test_a_malformed_event_is_unreadable_and_names_its_process() -> None:
    incoming = RequestTracker(DIALECT).receive('{"method":"process/exited","params":{"processId":"p1","seq":3}}')
    assert incoming == exec_client._core.Unreadable("p1", "invalid params: expected int, got NoneType @ $.params.exitCode")


def test_a_read_that_may_have_stopped_at_max_bytes_asks_for_another() -> None:
    import base64

    def read(size: int) -> p.ReadResult:
        chunk = {"seq": 1, "stream": "stdout", "chunk": base64.b64encode(b"x" * size).decode()}
        raw = {**RECORDED_READ, "chunks": [chunk], "nextSeq": 2}
        return codex.decode_read_result(raw, after_seq=0, max_bytes=p.READ_MAX_BYTES)

    near = read(p.READ_MAX_BYTES - 1000)
    assert near.last_seq == near.next_seq  # more may be retained: the assembler reads again
    small = read(1000)
    assert small.last_seq == small.next_seq - 1  # everything: a closed read is terminal
