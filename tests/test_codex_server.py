"""Our server in the Codex dialect, driven by the raw client exactly as Codex's client talks.

The message shapes are the ones Codex 0.169 puts on the wire (captured between ``codex
exec`` and ``codex exec-server``); ``test_codex_cli.py`` runs the real client.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from exec_server.sandbox import SandboxSettings
from protocol import SandboxMode
from protocol._codex import uri_from_path
from rawclient import RawClient, no_leftover_processes, open_raw_client, output_of  # noqa: F401  (fixture used by name)

from conftest import RunningServer, StartServer

MIB: Final = 1024 * 1024
NOBODY: Final = 65534
TIMEOUT: Final = 30.0
CODEX_NOT_FOUND: Final = -32004


def _profile(workspace: Path, *, write: bool) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [{"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"}]
    if write:
        entries += [
            {"path": {"type": "special", "value": {"kind": "project_roots"}}, "access": "write"},
            {"path": {"type": "special", "value": {"kind": "tmpdir"}}, "access": "write"},
            {"path": {"type": "special", "value": {"kind": "project_roots", "subpath": ".git"}}, "access": "read", "missing_path_behavior": "skip"},
        ]
    return {
        "permissions": {"type": "managed", "file_system": {"type": "restricted", "entries": entries}, "network": "restricted"},
        "cwd": uri_from_path(str(workspace)),
        "workspaceRoots": [uri_from_path(str(workspace))],
        "windowsSandboxLevel": "disabled",
        "useLegacyLandlock": False,
    }


def _start(process_id: str, argv: list[str], cwd: Path | str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "processId": process_id,
        "metadata": {"threadId": "t", "toolCallId": "c"},
        "argv": argv,
        "cwd": uri_from_path(str(cwd)),
        "envPolicy": {"inherit": "core", "ignoreDefaultExcludes": False, "exclude": [], "set": {}, "includeOnly": []},
        "env": {"LC_ALL": "C.UTF-8"},
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
        "sandbox": None,
        "enforceManagedNetwork": False,
        "managedNetwork": None,
    }
    params.update(extra)
    return params


async def _call(raw: RawClient, method: str, params: Any) -> dict[str, Any]:
    """A Codex-shaped request (no "jsonrpc" member); the whole response."""
    response = await raw.response(await raw.send_request(method, params, jsonrpc=False))
    assert "jsonrpc" not in response  # Codex's server writes none either
    return response


async def _result(raw: RawClient, method: str, params: Any) -> Any:
    response = await _call(raw, method, params)
    assert "result" in response, response
    return response["result"]


async def _error(raw: RawClient, method: str, params: Any) -> dict[str, Any]:
    response = await _call(raw, method, params)
    assert "error" in response, response
    error: dict[str, Any] = response["error"]
    return error


@pytest.fixture
def workspace() -> Iterator[Path]:
    """Writable to any uid (the sandbox keeps the server's), so that only the sandbox decides."""
    path = Path(tempfile.mkdtemp(prefix="codex-dialect-", dir="/tmp"))
    path.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside() -> Iterator[Path]:
    """World-writable and outside the workspace: only the sandbox stands in the way."""
    path = Path(tempfile.mkdtemp(prefix="codex-outside-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _codex_client(server: RunningServer) -> AsyncIterator[RawClient]:
    async with open_raw_client(server.url, server.token) as raw:
        result = await _result(raw, "initialize", {"clientName": "codex-environment", "resumeSessionId": None})
        await raw.send_raw(json.dumps({"method": "initialized", "params": {}}))
        raw.initialize_result = result
        yield raw


@pytest.fixture
async def codex(server: RunningServer, no_leftover_processes: None) -> AsyncIterator[RawClient]:
    async for raw in _codex_client(server):
        yield raw


@pytest.fixture
async def sandboxed_codex(start_server: StartServer, no_leftover_processes: None) -> AsyncIterator[RawClient]:
    server = await start_server(sandbox=SandboxSettings(default_mode=SandboxMode.READ_ONLY, audit_denials="off"))
    async for raw in _codex_client(server):
        yield raw


# --- session ----------------------------------------------------------------------------------


async def test_initialize_without_protocol_version_answers_in_codex_shape(codex: RawClient) -> None:
    result = codex.initialize_result
    assert result is not None and set(result) == {"sessionId", "environmentInfo"}
    info = result["environmentInfo"]
    assert info["platformOs"] == "linux" and info["cwd"].startswith("file:///")
    assert os.path.basename(info["shell"]["path"]) == info["shell"]["name"]
    with trio.fail_after(TIMEOUT):
        assert await _result(codex, "environment/info", {}) == info


async def test_resume_keeps_the_session_and_its_processes(server: RunningServer, codex: RawClient, tmp_path: Path) -> None:
    assert codex.initialize_result is not None
    session_id = codex.initialize_result["sessionId"]
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("kept", ["sh", "-c", "echo kept"], tmp_path))
        await codex.events_for("kept")
        async with open_raw_client(server.url, server.token) as again:
            resumed = await _result(again, "initialize", {"clientName": "codex-environment", "resumeSessionId": session_id})
            assert resumed["sessionId"] == session_id
            read = await _result(again, "process/read", {"processId": "kept", "afterSeq": 0, "maxBytes": None, "waitMs": None})
            assert base64.b64decode(read["chunks"][0]["chunk"]) == b"kept\n" and read["closed"] is True


# --- processes --------------------------------------------------------------------------------


async def test_a_command_pushes_codex_shaped_events(codex: RawClient, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        started = await _result(codex, "process/start", _start("p1", ["sh", "-c", "echo out; echo err >&2; exit 3"], tmp_path))
        events = await codex.events_for("p1")
    assert started == {"processId": "p1", "sandboxType": "none"}  # no pid: Codex has none
    assert output_of(events, "stdout") == b"out\n" and output_of(events, "stderr") == b"err\n"
    exited = next(e for e in events if e.kind == "exited")
    assert exited.params == {"processId": "p1", "seq": exited.seq, "exitCode": 3, "sandboxDenied": False}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_env_policy_and_env_build_the_environment(codex: RawClient, tmp_path: Path) -> None:
    params = _start(
        "env",
        ["sh", "-c", 'echo "$A|$B|${HOME:+home}|${SECRET_TOKEN:-none}"'],
        tmp_path,
        envPolicy={"inherit": "core", "ignoreDefaultExcludes": False, "exclude": [], "set": {"A": "set"}, "includeOnly": []},
        env={"B": "env", "SECRET_TOKEN": "given"},
    )
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", params)
        events = await codex.events_for("env")
    assert output_of(events) == b"set|env|home|given\n"


async def test_read_with_null_fields_while_running_has_a_boolean_sandbox_denied(codex: RawClient, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("slow", ["sh", "-c", "echo first; read x"], tmp_path, pipeStdin=True))
        await codex.wait_output("slow", b"first\n")
        read = await _result(codex, "process/read", {"processId": "slow", "afterSeq": None, "maxBytes": None, "waitMs": None})
        assert read["exited"] is False and read["exitCode"] is None and read["sandboxDenied"] is False
        assert set(read) == {"chunks", "nextSeq", "exited", "exitCode", "closed", "failure", "sandboxDenied"}
        assert await _result(codex, "process/terminate", {"processId": "slow"}) == {"running": True}
        await codex.events_for("slow")


async def test_pipe_stdin_and_process_write(codex: RawClient, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("cat", ["head", "-n1"], tmp_path, pipeStdin=True))
        written = await _result(codex, "process/write", {"processId": "cat", "chunk": base64.b64encode(b"line\n").decode(), "writeId": "w1"})
        events = await codex.events_for("cat")
    assert written == {"status": "accepted"}
    assert output_of(events) == b"line\n"


async def test_a_codex_write_id_is_bounded_like_ours(codex: RawClient, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("ids", ["sleep", "30"], tmp_path, pipeStdin=True))
        chunk = base64.b64encode(b"x").decode()
        error = await _error(codex, "process/write", {"processId": "ids", "chunk": chunk, "writeId": "w" * 129})
        assert error["code"] == -32602 and "writeId" in error["message"]
        await _result(codex, "process/terminate", {"processId": "ids"})
        await codex.events_for("ids")


async def test_codex_writes_count_against_the_pending_write_budget(
    start_server: StartServer, tmp_path: Path, no_leftover_processes: None
) -> None:
    """A command that never reads its stdin: writes past the pipe wait, and past the
    connection's budget the next one is refused at once, in Codex's dialect as in ours."""
    server = await start_server(max_pending_write_bytes=2 * MIB)
    async for raw in _codex_client(server):
        with trio.fail_after(TIMEOUT):
            await _result(raw, "process/start", _start("deaf", ["sleep", "30"], tmp_path, pipeStdin=True))
            chunk = base64.b64encode(b"\0" * (3 * MIB // 2)).decode()
            first = await raw.send_request("process/write", {"processId": "deaf", "chunk": chunk})
            second = await raw.send_request("process/write", {"processId": "deaf", "chunk": chunk})
            refused = await raw.response(second)
            assert "error" in refused and "process/write in flight" in refused["error"]["message"], refused
            await _result(raw, "process/terminate", {"processId": "deaf"})
            await raw.response(first)  # it ends with the process
            await raw.events_for("deaf")


async def test_interrupt_is_delivered_and_answered_empty(codex: RawClient, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("int", ["sh", "-c", "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done"], tmp_path))
        await codex.wait_output("int", b"ready\n")
        assert await _result(codex, "process/signal", {"processId": "int", "signal": "interrupt"}) == {}
        events = await codex.events_for("int")
    assert b"got-int" in output_of(events)
    assert next(e for e in events if e.kind == "exited").params["exitCode"] == 7


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"arg0": "other-name"}, "arg0"),
        ({"cwd": "/not/a/uri"}, "file:// URI"),
        ({"cwd": "file://remote-host/x"}, "remote host"),
    ],
)
async def test_what_we_cannot_honour_is_refused_clearly(codex: RawClient, tmp_path: Path, extra: dict[str, Any], needle: str) -> None:
    with trio.fail_after(TIMEOUT):
        params = _start("refused", ["true"], tmp_path)
        params.update(extra)
        error = await _error(codex, "process/start", params)
    assert error["code"] == -32602 and needle in error["message"], error
    assert codex.events_of("refused") == []


async def test_tty_runs_on_a_terminal_its_output_is_stream_pty_and_stdin_is_the_terminal(codex: RawClient, tmp_path: Path) -> None:
    """Like Codex's own server: stdout and stderr merged as "pty", writes accepted although
    pipeStdin is false (the terminal is stdin), a 24x80 terminal."""
    argv = ["sh", "-c", "tty; stty size; echo err >&2; read line; echo got:$line"]
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("tty", argv, tmp_path, tty=True, pipeStdin=False))
        await codex.wait_output("tty", b"err", stream="pty")
        written = await _result(codex, "process/write", {"processId": "tty", "chunk": base64.b64encode(b"hi\n").decode()})
        events = await codex.events_for("tty")
        read = await _result(codex, "process/read", {"processId": "tty", "afterSeq": 0, "maxBytes": None, "waitMs": 0})
    assert written == {"status": "accepted"}
    out = output_of(events, "pty")
    assert out.startswith(b"/dev/pts/") and b"24 80\r\n" in out and b"err\r\n" in out and b"got:hi\r\n" in out
    assert {e.params["stream"] for e in events if e.kind == "output"} == {"pty"}
    assert {chunk["stream"] for chunk in read["chunks"]} == {"pty"}


async def test_unknown_process_and_unknown_method_use_codex_codes(codex: RawClient) -> None:
    with trio.fail_after(TIMEOUT):
        unknown = await _error(codex, "process/read", {"processId": "nope", "afterSeq": 0, "maxBytes": None, "waitMs": 0})
        method = await _error(codex, "fs/watchMissing", {"watchId": 1, "missing": []})
    assert unknown["code"] == -32600 and "nope" in unknown["message"]
    assert method["code"] == -32601


async def test_delivery_is_lossless_for_a_client_that_stops_reading(codex: RawClient, tmp_path: Path) -> None:
    total = 20 * 1024 * 1024
    with trio.fail_after(TIMEOUT * 2):
        await _result(codex, "process/start", _start("big", ["head", "-c", str(total), "/dev/zero"], tmp_path))
        codex.pause()  # the queue fills: a bestEffort connection would drop, this one waits
        await trio.sleep(0.5)
        codex.resume()
        events = await codex.events_for("big")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(output_of(events)) == total


# --- the sandbox ------------------------------------------------------------------------------


async def test_a_sandboxed_write_outside_is_denied_and_reported(sandboxed_codex: RawClient, workspace: Path, outside: Path) -> None:
    argv = ["sh", "-c", f"echo in > inside.txt && echo out > {outside}/escaped.txt"]
    with trio.fail_after(TIMEOUT):
        started = await _result(sandboxed_codex, "process/start", _start("w", argv, workspace, sandbox=_profile(workspace, write=True)))
        events = await sandboxed_codex.events_for("w")
    assert started["sandboxType"] == "linuxSeccomp"
    exited = next(e for e in events if e.kind == "exited").params
    assert exited["exitCode"] != 0 and exited["sandboxDenied"] is True
    assert (workspace / "inside.txt").read_text() == "in\n"
    assert not (outside / "escaped.txt").exists()


async def test_an_existing_git_dir_stays_read_only_in_a_writable_workspace(sandboxed_codex: RawClient, workspace: Path) -> None:
    (workspace / ".git").mkdir()
    script = f"echo in > ok.txt; echo x > {workspace}/.git/config"
    with trio.fail_after(TIMEOUT):
        await _result(sandboxed_codex, "process/start", _start("git", ["sh", "-c", script], workspace, sandbox=_profile(workspace, write=True)))
        events = await sandboxed_codex.events_for("git")
    exited = next(e for e in events if e.kind == "exited").params
    assert exited["exitCode"] != 0 and exited["sandboxDenied"] is True
    assert (workspace / "ok.txt").read_text() == "in\n"
    assert not (workspace / ".git" / "config").exists()


async def test_a_null_sandbox_gets_the_servers_default_policy(sandboxed_codex: RawClient, workspace: Path) -> None:
    with trio.fail_after(TIMEOUT):
        started = await _result(sandboxed_codex, "process/start", _start("d", ["sh", "-c", "echo x > f.txt"], workspace))
        events = await sandboxed_codex.events_for("d")
    assert started["sandboxType"] == "linuxSeccomp"  # readOnly, the server's default
    assert next(e for e in events if e.kind == "exited").params["exitCode"] != 0
    assert not (workspace / "f.txt").exists()


# --- file operations --------------------------------------------------------------------------


async def test_file_operations_round_trip_inside_the_workspace(sandboxed_codex: RawClient, workspace: Path) -> None:
    sandbox = _profile(workspace, write=True)
    uri = uri_from_path(str(workspace / "a.txt"))
    data = base64.b64encode(b"hello\n").decode()
    raw = sandboxed_codex
    with trio.fail_after(TIMEOUT):
        assert await _result(raw, "fs/writeFile", {"path": uri, "dataBase64": data, "sandbox": sandbox}) == {}
        assert await _result(raw, "fs/readFile", {"path": uri, "sandbox": None}) == {"dataBase64": data}
        metadata = await _result(raw, "fs/getMetadata", {"path": uri, "sandbox": None})
        assert (metadata["isFile"], metadata["isDirectory"], metadata["size"]) == (True, False, 6)
        nested = uri_from_path(str(workspace / "d1" / "d2"))
        assert await _result(raw, "fs/createDirectory", {"path": nested, "recursive": True, "sandbox": sandbox}) == {}
        copy = uri_from_path(str(workspace / "d1" / "b.txt"))
        assert await _result(raw, "fs/copy", {"sourcePath": uri, "destinationPath": copy, "recursive": False, "sandbox": sandbox}) == {}
        listing = await _result(raw, "fs/readDirectory", {"path": uri_from_path(str(workspace)), "sandbox": None})
        assert sorted((e["fileName"], e["isDirectory"]) for e in listing["entries"]) == [("a.txt", False), ("d1", True)]
        walked = await _result(
            raw,
            "fs/walk",
            {"path": uri_from_path(str(workspace)), "options": {"maxDepth": 5, "maxDirectories": 10, "maxEntries": 10, "followDirectorySymlinks": False}, "sandbox": None},
        )
        assert {(e["path"], e["kind"]) for e in walked["entries"]} == {
            (uri, "file"),
            (uri_from_path(str(workspace / "d1")), "directory"),
            (copy, "file"),
            (nested, "directory"),
        }
        assert walked["truncated"] is False
        canonical = await _result(raw, "fs/canonicalize", {"path": uri_from_path(str(workspace / "d1" / ".." / "a.txt")), "sandbox": None})
        assert canonical == {"path": uri}
        assert await _result(raw, "fs/open", {"handleId": "h1", "path": uri, "sandbox": None}) == {"handleId": "h1"}
        first = await _result(raw, "fs/readBlock", {"handleId": "h1", "offset": 0, "len": 2})
        rest = await _result(raw, "fs/readBlock", {"handleId": "h1", "offset": 2, "len": 100})
        assert (base64.b64decode(first["chunk"]), first["eof"], base64.b64decode(rest["chunk"]), rest["eof"]) == (b"he", False, b"llo\n", True)
        assert await _result(raw, "fs/close", {"handleId": "h1"}) == {}
        assert (await _error(raw, "fs/readBlock", {"handleId": "h1", "offset": 0, "len": 1}))["code"] == CODEX_NOT_FOUND
        not_empty = await _error(raw, "fs/remove", {"path": uri_from_path(str(workspace / "d1")), "recursive": False, "force": False, "sandbox": sandbox})
        assert "not empty" in not_empty["message"]
        assert await _result(raw, "fs/remove", {"path": uri_from_path(str(workspace / "d1")), "recursive": True, "force": True, "sandbox": sandbox}) == {}
        # Written inside the sandbox: as the uid a sandboxed command writes as.
        await _result(raw, "process/start", _start("touch", ["touch", "by-command"], workspace, sandbox=sandbox))
        await raw.events_for("touch")
    assert not (workspace / "d1").exists()
    assert (workspace / "a.txt").stat().st_uid == (workspace / "by-command").stat().st_uid


async def test_missing_paths_are_codex_not_found(sandboxed_codex: RawClient, workspace: Path) -> None:
    missing = uri_from_path(str(workspace / "nope"))
    with trio.fail_after(TIMEOUT):
        for method, params in [
            ("fs/readFile", {"path": missing, "sandbox": None}),
            ("fs/getMetadata", {"path": missing, "sandbox": None}),
            ("fs/remove", {"path": missing, "recursive": False, "force": False, "sandbox": _profile(workspace, write=True)}),
        ]:
            error = await _error(sandboxed_codex, method, params)
            assert error == {"code": CODEX_NOT_FOUND, "message": "No such file or directory (os error 2)"}, method
        not_a_file = await _error(sandboxed_codex, "fs/readFile", {"path": uri_from_path(str(workspace)), "sandbox": None})
        assert not_a_file["code"] == -32600


async def test_a_write_outside_the_writable_roots_fails_like_a_commands_would(
    sandboxed_codex: RawClient, workspace: Path, outside: Path
) -> None:
    data = base64.b64encode(b"x").decode()
    target = uri_from_path(str(outside / "escaped.txt"))
    with trio.fail_after(TIMEOUT):
        write = await _error(sandboxed_codex, "fs/writeFile", {"path": target, "dataBase64": data, "sandbox": _profile(workspace, write=True)})
        # A null sandbox is the server's default (readOnly here): no write anywhere.
        default = await _error(sandboxed_codex, "fs/writeFile", {"path": uri_from_path(str(workspace / "w")), "dataBase64": data, "sandbox": None})
        mkdir = await _error(sandboxed_codex, "fs/createDirectory", {"path": target, "recursive": True, "sandbox": _profile(workspace, write=False)})
    for error in (write, default, mkdir):
        assert error["code"] == -32603 and ("Permission denied" in error["message"] or "Read-only file system" in error["message"]), error
    assert not (outside / "escaped.txt").exists() and not (workspace / "w").exists()


# --- fs/* for our own clients ----------------------------------------------------------------


async def test_our_own_clients_use_the_same_file_operations_with_our_codes(
    start_server: StartServer, workspace: Path, outside: Path, no_leftover_processes: None
) -> None:
    server = await start_server(sandbox=SandboxSettings(default_mode=SandboxMode.READ_ONLY, audit_denials="off"))
    uri = uri_from_path(str(workspace / "ours.txt"))
    data = base64.b64encode(b"ours\n").decode()
    async with open_raw_client(server.url, server.token) as raw:
        await raw.initialize()  # our protocol (protocolVersion 1)
        with trio.fail_after(TIMEOUT):
            assert await raw.call("fs/writeFile", {"path": uri, "dataBase64": data, "sandbox": _profile(workspace, write=True)}) == {}
            assert await raw.call("fs/readFile", {"path": uri, "sandbox": None}) == {"dataBase64": data}
            missing = await raw.expect_error("fs/readFile", {"path": uri_from_path(str(workspace / "nope")), "sandbox": None}, -32009)
            denied = await raw.expect_error(
                "fs/writeFile", {"path": uri_from_path(str(outside / "x")), "dataBase64": data, "sandbox": _profile(workspace, write=True)}, -32010
            )
            bad = await raw.expect_error("fs/readFile", {"path": "relative", "sandbox": None}, -32602)
            # Our protocol's own methods are untouched next to them.
            events = await raw.run("p", ["sh", "-c", "cat ours.txt"], cwd=str(workspace), sandbox={"mode": "readOnly"})
    assert "No such file" in missing.message
    assert denied.data is not None and denied.data["errno"] in ("EACCES", "EROFS")
    assert "file:// URI" in bad.message
    assert output_of(events) == b"ours\n"


async def test_a_fifo_is_refused_at_once_not_waited_on(sandboxed_codex: RawClient, workspace: Path) -> None:
    fifo = workspace / "pipe"
    os.mkfifo(fifo)
    with trio.fail_after(TIMEOUT):
        error = await _error(sandboxed_codex, "fs/readFile", {"path": uri_from_path(str(fifo)), "sandbox": None})
    assert error["code"] == -32600 and "not a file" in error["message"]


async def test_inheriting_the_servers_environment_never_hands_over_its_token(
    codex: RawClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEC_SERVER_TOKEN", "the-servers-secret")
    monkeypatch.setenv("PLAIN_SETTING", "visible")
    policy = {"inherit": "all", "ignoreDefaultExcludes": True, "exclude": [], "set": {}, "includeOnly": []}
    argv = ["sh", "-c", 'echo "${EXEC_SERVER_TOKEN:-absent}|$PLAIN_SETTING"']
    with trio.fail_after(TIMEOUT):
        await _result(codex, "process/start", _start("tok", argv, tmp_path, envPolicy=policy, env={}))
        events = await codex.events_for("tok")
    assert output_of(events) == b"absent|visible\n"
