"""``exec-client run`` as a subprocess, against the real server and the scripted fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from exec_server.sandbox import SandboxSettings
from fake_server import FAKE_TOKEN, FakeProcessScript, FakeServer, ScriptedProcess, make_events
from protocol import SandboxMode
from nspid import descendant_running

REPO: Path = Path(__file__).resolve().parent.parent


# Set while a test of this module runs in its "master" round (the `server` fixture below):
# its CLI calls then go through a control master, as a user's second and later calls do.
_MASTER_ENV: dict[str, str] = {}


def cli_env(env: dict[str, str] | None, home: Path) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("EXEC_SERVER_")}
    base["HOME"] = str(home)  # no ~/.config/exec-server/token unless a test writes one
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    base.update(_MASTER_ENV)
    base.update(env or {})
    return base


@pytest.fixture(params=["direct", "master"])
async def server(request: pytest.FixtureRequest, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real server; every test that takes it runs twice: each CLI call on its own, and
    through a control master started (by a first call) before the test begins."""
    running = await start_server()
    if request.param == "direct":
        yield running
        return
    home = tmp_path_factory.mktemp("master-home")
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime), "EXEC_CLIENT_CONTROL_PERSIST": "60"}
    with trio.fail_after(30):
        async with control_master(running.url, running.token, env, home) as _pid:
            _MASTER_ENV.update(env)
            try:
                yield running
            finally:
                _MASTER_ENV.clear()


def listening(path: Path) -> bool:
    """Whether a unix socket at ``path`` takes connections (a dead master's does not)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@asynccontextmanager
async def control_master(url: str, token: str, env: dict[str, str], home: Path) -> AsyncIterator[int]:
    """A control master for ``url``/``token``, started the way a user's first call starts it;
    its pid. On the way out it is stopped (``control stop``) and waited for."""
    env = {**env, "EXEC_SERVER_URL": url, "EXEC_SERVER_TOKEN": token}
    first = await exec_client(["run", "--", "true"], env=env, home=home)
    assert first.returncode == 0, first.stderr
    runtime = Path(env["XDG_RUNTIME_DIR"]) / "exec-client"
    while not any(map(listening, runtime.glob("*.sock"))):  # the master imports the client, then listens
        await trio.sleep(0.02)
    (lock,) = runtime.glob("*.lock")
    pid = int(lock.read_text())
    try:
        yield pid
    finally:
        stopped = await exec_client(["control", "stop"], env=env, home=home)
        assert stopped.returncode == 0, stopped.stderr
        while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
            await trio.sleep(0.02)


async def exec_client(
    args: list[str], *, env: dict[str, str] | None = None, home: Path, stdin: bytes = b"", cwd: Path | None = None
) -> trio.CompletedProcess[bytes]:
    """Run ``python -m exec_client`` with a clean token environment and HOME."""
    return await trio.run_process(
        [sys.executable, "-m", "exec_client", *args],
        env=cli_env(env, home),
        cwd=cwd,
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.count("\n") == 1, text
    return text.strip()


async def test_json_record_of_echo_hi_exit_3(server: Any, tmp_path: Path) -> None:
    # Exits 3, readCalls 0, completion "pushed".
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--json", "--", "sh", "-c", "echo hi; exit 3"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
    assert done.returncode == 3, done.stderr
    record = json.loads(done.stdout)
    assert done.stdout.decode().count("\n") == 1  # only the record
    assert (record["exitCode"], record["stdout"], record["readCalls"], record["completion"]) == (3, "hi\n", 0, "pushed")
    for field in ("signal", "timedOut", "sandboxDenied", "denials", "durationMs", "usage", "outputLost", "failure"):
        assert field in record
    assert (record["signal"], record["timedOut"], record["outputLost"], record["failure"]) == (None, False, False, None)


async def test_streams_stdout_and_stderr_binary_safe(server: Any, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    token_file = tmp_path / "token"
    token_file.write_text(server.token + "\n")
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--token-file", str(token_file), "--", "sh", "-c", f"cat {source}; printf err >&2; exit 7"],
            home=tmp_path,
        )
    assert done.returncode == 7
    assert done.stdout == payload
    assert done.stderr == b"err"


async def test_stdin_is_forwarded_with_eof(server: Any, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one write piece
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--stdin", "--", "cat"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
            stdin=data,
        )
    assert (done.returncode, done.stdout == data, done.stderr) == (0, True, b"")


async def test_signal_exit_code_is_128_plus_n(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--", "sh", "-c", "kill -TERM $$"],
            env={"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
    assert done.returncode == 128 + 15
    assert done.stderr == b""


async def test_token_file_from_env_and_cwd(server: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "tok"
    token_file.write_text(server.token)
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--cwd", str(tmp_path), "--", "pwd"],
            env={"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN_FILE": str(token_file)},
            home=tmp_path,
        )
    assert (done.returncode, done.stdout) == (0, f"{tmp_path}\n".encode())


async def test_default_token_file_in_home(server: Any, tmp_path: Path) -> None:
    config = tmp_path / ".config" / "exec-server"
    config.mkdir(parents=True)
    (config / "token").write_text(server.token)
    with trio.fail_after(30):
        done = await exec_client(["run", "--url", server.url, "--", "true"], home=tmp_path)
    assert done.returncode == 0, done.stderr


async def test_timeout_is_reported(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--timeout", "0.3", "--", "sleep", "30"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
    assert done.returncode in (128 + 9, 128 + 15)
    assert "timed out" in one_line(done.stderr)


async def test_missing_program_exits_127(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--", "/nonexistent/program"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
    assert done.returncode == 127
    assert "cannot start '/nonexistent/program'" in one_line(done.stderr)


async def test_wrong_token_is_one_line_and_255(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--", "true"], env={"EXEC_SERVER_TOKEN": "wrong"}, home=tmp_path
        )
    assert done.returncode == 255
    assert "authentication failed" in one_line(done.stderr)
    assert done.stdout == b""


async def test_unreachable_server_is_one_line_and_255(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", f"ws://127.0.0.1:{port}", "--", "true"], env={"EXEC_SERVER_TOKEN": "x"}, home=tmp_path
        )
    assert done.returncode == 255
    assert "connection refused" in one_line(done.stderr)


async def test_no_token_anywhere_is_one_line_and_255(tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(["run", "--url", "ws://127.0.0.1:9", "--", "true"], home=tmp_path)
    assert done.returncode == 255
    assert "token" in one_line(done.stderr)


async def test_usage_error_without_command(tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(["run", "--url", "ws://127.0.0.1:9"], env={"EXEC_SERVER_TOKEN": "x"}, home=tmp_path)
    assert done.returncode == 2
    assert "no command" in one_line(done.stderr)


async def test_sandbox_denial_on_the_real_server_prints_a_notice(start_server: Any, tmp_path: Path) -> None:
    sandboxed = await start_server(sandbox=SandboxSettings(default_mode=SandboxMode.READ_ONLY, audit_denials="off"))
    target = "/etc/exec-client-cli-test"
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", sandboxed.url, "--json", "--sandbox", "readOnly", "--", "sh", "-c", f"echo x > {target}"],
            env={"EXEC_SERVER_TOKEN": sandboxed.token},
            home=tmp_path,
        )
    record = json.loads(done.stdout)
    assert done.returncode == record["exitCode"] != 0
    assert record["sandboxDenied"] is True
    assert any(denial["target"] == target for denial in record["denials"])
    assert "exec-client: sandbox denied: " in done.stderr.decode()
    assert not Path(target).exists()


# --- against the scripted fake: outcomes the real server rarely produces on demand ------------

ServeFake = Callable[..., Awaitable[FakeServer]]


@pytest.fixture
async def serve_fake(nursery: trio.Nursery) -> ServeFake:
    async def serve(*scripts: FakeProcessScript, **kwargs: Any) -> FakeServer:
        fake = FakeServer(list(scripts), **kwargs)
        await nursery.start(fake.serve)
        return fake

    return serve


async def test_sandbox_denied_prints_a_notice(serve_fake: ServeFake, tmp_path: Path) -> None:
    events = make_events("x", [("stderr", b"sh: /etc/x: Permission denied\n"), ("exit", 1, True), ("close",)])
    fake = await serve_fake(FakeProcessScript(ScriptedProcess(events), push=[1, 2, 3]))
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", fake.url, "--sandbox", "readOnly", "--", "sh", "-c", "touch /etc/x"],
            env={"EXEC_SERVER_TOKEN": FAKE_TOKEN},
            home=tmp_path,
        )
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert lines == ["sh: /etc/x: Permission denied", "exec-client: sandbox denied: fs.make_reg /etc/x"]
    start = [params for method, params in fake.requests if method == "process/start"][0]
    assert start["sandbox"] == {"mode": "readOnly", "writableRoots": [], "network": False}


async def test_failure_record_exits_255_with_the_failure(serve_fake: ServeFake, tmp_path: Path) -> None:
    events = make_events("x", [("stdout", b"partial\n"), ("exit", 0), ("close",)])
    fake = await serve_fake(FakeProcessScript(ScriptedProcess(events), push=[1, "drop"]), allow_resume=False)
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", fake.url, "--json", "--", "prog"], env={"EXEC_SERVER_TOKEN": FAKE_TOKEN}, home=tmp_path
        )
    assert done.returncode == 255
    record = json.loads(done.stdout)
    assert (record["exitCode"], record["stdout"]) == (None, "partial\n")
    assert "no longer has the session" in record["failure"]
    # While it tries to resume, the CLI says so; then the failure, one line each.
    lines = done.stderr.decode().splitlines()
    assert "Traceback" not in done.stderr.decode()
    assert len(lines) == 2 and "resuming the session" in lines[0] and lines[1].startswith("exec-client: failure:")


# --- the ssh-like habits: stdin, pipes, cwd, --json, ps/kill, --version, --no-resume ---------


async def test_piped_stdin_is_forwarded_by_default_and_n_turns_it_off(server: Any, tmp_path: Path) -> None:
    env = {"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token}
    with trio.fail_after(30):
        piped = await exec_client(["run", "--", "cat"], env=env, home=tmp_path, stdin=b"hi\n")
        off = await exec_client(["run", "-n", "--", "cat"], env=env, home=tmp_path, stdin=b"hi\n")
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, b"hi\n", b"")
    assert (off.returncode, off.stdout, off.stderr) == (0, b"", b"")


async def test_a_closed_stdout_ends_quietly_with_141_and_terminates_the_command(server: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # Found from the host by its distinct command line ($$ is a pid of the command's namespace).
    seq = ("seq", "1", f"100000000{os.getpid()}")
    env = cli_env({"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token}, tmp_path)
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "exec_client", "run", "-n", "--", "sh", "-c", f"echo $$ > {pid_file}; exec {' '.join(seq)}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        assert await process.stdout.receive_some(16)  # what `head -c 16` would take
        pid = descendant_running(*seq)
        assert pid is not None
        await process.stdout.aclose()  # ... and then it exits
        stderr = b""
        while chunk := await process.stderr.receive_some(65536):
            stderr += chunk
        await process.wait()
        await process.stderr.aclose()
        while True:  # the remote seq is terminated, not left blocked on a full pipe
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await trio.sleep(0.02)
    assert process.returncode == 141
    assert stderr == b""


async def test_a_missing_cwd_says_so(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--cwd", "/nonexistent/dir", "--", "ls"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
    assert done.returncode == 125
    assert "working directory '/nonexistent/dir'" in one_line(done.stderr)


async def test_a_relative_cwd_is_resolved_on_the_server_not_here(server: Any, tmp_path: Path) -> None:
    # The in-process server's working directory is this test run's; the CLI runs in
    # tmp_path, where no "tests" directory exists.
    expected = Path(server.server.default_cwd) / "tests"
    assert expected.is_dir() and not (tmp_path / "tests").exists()
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--cwd", "tests", "--", "pwd"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
            cwd=tmp_path,
        )
    assert (done.returncode, done.stdout) == (0, f"{expected}\n".encode()), done.stderr


async def test_json_prints_one_record_even_when_the_start_fails(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        missing = await exec_client(
            ["run", "--url", server.url, "--json", "--", "/nonexistent/program"],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
        refused = await exec_client(
            ["run", "--url", server.url, "--json", "--", "true"], env={"EXEC_SERVER_TOKEN": "wrong"}, home=tmp_path
        )
    assert missing.returncode == 127 and missing.stdout.decode().count("\n") == 1
    record = json.loads(missing.stdout)
    assert (record["exitCode"], record["argv"]) == (None, ["/nonexistent/program"])
    assert "cannot start '/nonexistent/program'" in record["failure"]
    assert refused.returncode == 255
    assert "authentication failed" in json.loads(refused.stdout)["failure"]


async def test_json_binary_base64_keeps_every_byte(server: Any, tmp_path: Path) -> None:
    import base64

    payload = bytes(range(256))
    source = tmp_path / "bytes"
    source.write_bytes(payload)
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", server.url, "--json", "--binary", "--", "cat", str(source)],
            env={"EXEC_SERVER_TOKEN": server.token},
            home=tmp_path,
        )
    record = json.loads(done.stdout)
    assert record["outputEncoding"] == "base64"
    assert base64.b64decode(record["stdout"]) == payload


async def test_ps_and_kill_act_on_a_session(server: Any, tmp_path: Path) -> None:
    import exec_client as api

    env = {"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token}
    with trio.fail_after(30):
        async with api.open_client(server.url, token=server.token, resume=False) as owner:
            handle = await owner.start(["sleep", "30"])
            session = owner.session_id
            listed = await exec_client(["ps", "--session", session], env=env, home=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert handle.process_id in listed.stdout.decode() and "sleep 30" in listed.stdout.decode()
        killed = await exec_client(["kill", "--session", session, handle.process_id], env=env, home=tmp_path)
        assert (killed.returncode, killed.stderr) == (0, b"")
        assert handle.pid is not None
        while True:
            try:
                os.kill(handle.pid, 0)
            except ProcessLookupError:
                break
            await trio.sleep(0.02)


async def test_version(tmp_path: Path) -> None:
    import exec_client as api

    with trio.fail_after(30):
        done = await exec_client(["--version"], home=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"exec-client {api.__version__}\n".encode())


async def test_no_resume_fails_at_once_without_resuming(serve_fake: ServeFake, tmp_path: Path) -> None:
    events = make_events("x", [("stdout", b"partial\n"), ("exit", 0), ("close",)])
    fake = await serve_fake(FakeProcessScript(ScriptedProcess(events), push=[1, "drop"]))
    with trio.fail_after(30):
        done = await exec_client(
            ["run", "--url", fake.url, "--no-resume", "--", "prog"], env={"EXEC_SERVER_TOKEN": FAKE_TOKEN}, home=tmp_path
        )
    assert done.returncode == 255
    assert "session resume is off" in one_line(done.stderr)
    assert fake.connections == 1


async def test_a_stdin_that_never_ends_does_not_keep_the_cli_alive(server: Any, tmp_path: Path) -> None:
    env = cli_env({"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token}, tmp_path)
    with trio.fail_after(30):
        # Like `sleep 100 | exec-client run -- true`: our stdin stays open and silent.
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "exec_client", "run", "--", "true"], env=env, stdin=subprocess.PIPE
        )
        assert process.stdin is not None
        try:
            with trio.fail_after(15):
                assert await process.wait() == 0
        finally:
            await process.stdin.aclose()
            if process.returncode is None:
                process.kill()
            await process.wait()


async def test_runs_with_no_stdin_at_all(server: Any, tmp_path: Path) -> None:
    env = cli_env({"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token}, tmp_path)
    with trio.fail_after(30):
        done = await trio.run_process(
            ["sh", "-c", f"exec {sys.executable} -m exec_client run -- echo ok <&-"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"ok\n", b"")


_IMPORTED_BY_A_RUN = """
import sys
from exec_client._cli import run_cli
code = run_cli(["run", "--", "true"])
print(code, " ".join(sorted(name for name in ("protocol", "protocol._codex", "anyio", "asyncio", "trio", "wsproto") if name in sys.modules)))
"""


async def test_a_run_imports_only_what_it_needs(server: Any, tmp_path: Path) -> None:
    """The cold start (a build tool calls the CLI once per command): through a control master a
    call imports none of the client; on its own, no Codex message shapes and no trio."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-c", _IMPORTED_BY_A_RUN],
            env=cli_env({"EXEC_SERVER_URL": server.url, "EXEC_SERVER_TOKEN": server.token}, tmp_path),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    through_master = bool(_MASTER_ENV)
    assert done.stdout.decode().split(maxsplit=1) == (["0"] if through_master else ["0", "anyio asyncio protocol wsproto\n"])
