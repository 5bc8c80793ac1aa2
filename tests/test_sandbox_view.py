"""The sandbox's view of the host, through the real server, as users run it.

As root (a root container): the workspace is root's own, tools live under /root, commands
keep uid 0 with no capability. Everything outside the writable roots is read-only for them
(chmod, chown, utimes included), ``.git`` inside the workspace too unless the request lifts
it, the server's token is masked, and each command has its own PID and IPC namespaces.
The same view for a server that runs as an ordinary user (started with ``runuser``).
Each refusal must be in the record's ``denials``, from audit records where the host has
them (else the stderr heuristic, labelled as such).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from exec_client import Client, TerminalRecord, open_client
from exec_server import Server, ServerConfig, serve_websocket
from exec_server.sandbox import Sandbox, SandboxSettings, detect
from protocol import SandboxMode

IS_ROOT: Final = os.geteuid() == 0
KERNEL: Final = detect()
WORKSPACE_WRITE: Final = {"mode": "workspaceWrite"}
READ_ONLY: Final = {"mode": "readOnly"}
TEST_USER: Final = "tester"

pytestmark = pytest.mark.skipif(KERNEL.landlock_abi < 3, reason="kernel without Landlock ABI 3")


@contextlib.contextmanager
def scratch(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    # Under /tmp: commands have no CAP_DAC_OVERRIDE, and pytest's tmp_path sits in a 0700 dir.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workspace() -> Iterator[Path]:
    with scratch("exec-view-ws-") as path:
        (path / ".git").mkdir()
        (path / ".git" / "config").write_text("[core]\n")
        yield path


@pytest.fixture
def outside() -> Iterator[Path]:
    with scratch("exec-view-out-", 0o777) as path:
        yield path


@pytest.fixture
def token_dir() -> Iterator[Path]:
    with scratch("exec-view-config-", 0o700) as path:
        (path / "token").write_text(secrets.token_urlsafe(32) + "\n")
        (path / "token").chmod(0o600)
        yield path


@contextlib.asynccontextmanager
async def serving(masked: tuple[str, ...] = ()) -> AsyncIterator[tuple[Client, Server]]:
    settings = SandboxSettings(default_mode=SandboxMode.WORKSPACE_WRITE, masked_paths=masked)
    config = ServerConfig(token=secrets.token_urlsafe(32), sandbox=settings)
    server = Server(config, Sandbox.create(settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        listener = await nursery.start(serve_websocket, server, "127.0.0.1", 0)
        async with open_client(f"ws://127.0.0.1:{listener.port}", token=config.token) as client:
            if not server.sandbox.available:
                pytest.skip(f"no kernel sandbox here: {server.sandbox.unavailable_reason}")
            yield client, server
        nursery.cancel_scope.cancel()


def assert_denied(record: TerminalRecord, blocker: str, target: str) -> None:
    """``target`` was refused and reported: exactly, from audit; as a path, from the heuristic."""
    assert record.sandbox_denied is True, (record.denials, record.stderr)
    found = [(d.blocker, d.target) for d in record.denials]
    if record.sandbox_denied_source == "audit":
        assert (blocker, target) in found, found
    else:
        assert record.sandbox_denied_source == "heuristic"
        assert ("fs", target) in found, found


async def run(client: Client, argv: list[str], cwd: Path, sandbox: dict[str, Any] = WORKSPACE_WRITE) -> TerminalRecord:
    return await client.run(argv, cwd=str(cwd), sandbox=sandbox)


# -- root server, root-owned workspace ---------------------------------------------------------


async def test_workspace_write_writes_the_workspace_and_its_tmpdir(workspace: Path) -> None:
    with trio.fail_after(60):
        async with serving() as (client, _):
            record = await run(client, ["sh", "-c", 'echo a > f && echo b > "$TMPDIR/t" && cat f "$TMPDIR/t" && id -u'], workspace)
    assert (record.exit_code, record.stdout) == (0, f"a\nb\n{os.getuid()}\n".encode()), record.stderr
    assert record.sandbox_denied is False
    assert (workspace / "f").read_text() == "a\n"


async def test_read_only_runs_the_python_that_lives_under_root(workspace: Path) -> None:
    python = os.path.realpath(sys.executable)
    if IS_ROOT:
        assert python.startswith("/root/"), python  # the pyenv interpreter the venv uses
    with trio.fail_after(60):
        async with serving() as (client, _):
            record = await run(client, [python, "-c", "import os; print(os.getuid())"], workspace, READ_ONLY)
    assert (record.exit_code, record.stdout) == (0, f"{os.getuid()}\n".encode()), record.stderr
    assert record.sandbox_denied is False


@pytest.mark.parametrize(
    ("argv", "blocker"),
    [
        (["chmod", "600"], "fs.chmod"),
        (["chown", "65534:65534"], "fs.chown"),
        (["touch", "-d", "2000-01-01"], "fs.utime"),
        (["truncate", "-s", "0"], "fs.write_file"),
    ],
    ids=["chmod", "chown", "touch", "truncate"],
)
async def test_metadata_and_writes_outside_fail_change_nothing_and_are_reported(
    workspace: Path, outside: Path, argv: list[str], blocker: str
) -> None:
    victim = outside / "victim"
    victim.write_text("original\n")
    victim.chmod(0o644)
    before = victim.stat()
    with trio.fail_after(60):
        async with serving() as (client, _):
            record = await run(client, [*argv, str(victim)], workspace)
    assert record.exit_code != 0
    after = victim.stat()
    assert (after.st_mode, after.st_uid, after.st_mtime_ns, victim.read_text()) == (
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
        "original\n",
    )
    if blocker == "fs.write_file":
        blocker = "fs.truncate"  # truncate(1) opens with O_WRONLY|O_CREAT... or calls truncate(2)
        if record.sandbox_denied_source == "audit":
            assert {d.blocker for d in record.denials} & {"fs.truncate", "fs.write_file"}, record.denials
            return
    assert_denied(record, blocker, str(victim))


async def test_git_is_read_only_by_default_and_an_empty_list_lifts_it(workspace: Path) -> None:
    config = workspace / ".git" / "config"
    with trio.fail_after(60):
        async with serving() as (client, _):
            write = await run(client, ["sh", "-c", "echo x >> .git/config"], workspace)
            chmod = await run(client, ["chmod", "600", ".git/config"], workspace)
            rest = await run(client, ["sh", "-c", "echo ok > README && cat README"], workspace)
            lifted = await run(
                client, ["sh", "-c", "echo x >> .git/config"], workspace, {**WORKSPACE_WRITE, "readOnlySubpaths": []}
            )
    assert write.exit_code != 0 and chmod.exit_code != 0
    assert_denied(write, "fs.write_file", str(config))
    assert_denied(chmod, "fs.chmod", str(config))
    assert (rest.exit_code, rest.stdout, rest.sandbox_denied) == (0, b"ok\n", False)
    assert lifted.exit_code == 0 and lifted.sandbox_denied is False
    assert config.read_text() == "[core]\nx\n"


async def test_the_token_file_and_the_servers_environment_are_unreadable(workspace: Path, token_dir: Path) -> None:
    token = token_dir / "token"
    with trio.fail_after(60):
        async with serving(masked=(str(token), str(token_dir))) as (client, _):
            cat_token = await run(client, ["cat", str(token)], workspace, READ_ONLY)
            environ = await run(client, ["cat", f"/proc/{os.getpid()}/environ"], workspace, READ_ONLY)
            listing = await run(client, ["ls", str(token_dir)], workspace, READ_ONLY)
    secret = token.read_bytes().strip()
    for record in (cat_token, environ, listing):
        assert record.exit_code != 0 and secret not in record.stdout
    assert b"Permission denied" in cat_token.stderr
    assert b"No such file" in environ.stderr  # the server is not in the command's PID namespace
    if IS_ROOT:  # a non-root server's own files read as denied by permissions only
        assert_denied(cat_token, "fs.read_file", str(token))


async def test_ps_shows_only_the_commands_own_tree(workspace: Path) -> None:
    with trio.fail_after(60):
        async with serving() as (client, _):
            record = await run(client, ["sh", "-c", "sleep 30 & ps -eo pid=,comm=; kill $!"], workspace, READ_ONLY)
    rows = [line.split(None, 1) for line in record.stdout.decode().splitlines()]
    assert record.exit_code == 0, record.stderr
    # PID 1 is the launcher's init; the command is PID 2; nothing of the host is listed.
    assert rows[0] == ["1", "exec-sandbox-la"] and rows[1] == ["2", "sh"], rows
    assert {name for _, name in rows} <= {"exec-sandbox-la", "sh", "sleep", "ps"}, rows
    assert len(rows) == 4


async def test_a_sysv_segment_of_one_command_is_invisible_to_the_next_and_to_the_host(workspace: Path) -> None:
    if shutil.which("ipcmk") is None or shutil.which("ipcs") is None:
        pytest.skip("needs util-linux ipcmk/ipcs")
    with trio.fail_after(60):
        async with serving() as (client, _):
            made = await run(client, ["sh", "-c", "ipcmk -M 4096 && ipcs -m"], workspace, READ_ONLY)
            seen = await run(client, ["ipcs", "-m"], workspace, READ_ONLY)
    assert made.exit_code == 0, made.stderr
    shmid = made.stdout.split(b"Shared memory id:")[1].split()[0]
    assert shmid in made.stdout.split(b"\n", 1)[1]  # the creator sees its own segment
    rows = [line for line in seen.stdout.splitlines() if line[:2] == b"0x"]
    assert rows == [], seen.stdout
    host = subprocess.run(["ipcs", "-m"], capture_output=True, check=True).stdout
    assert not any(line.split()[1:2] == [shmid] for line in host.splitlines() if line[:2] == b"0x")


async def test_an_exec_the_view_refuses_is_a_denial(workspace: Path, token_dir: Path) -> None:
    if not IS_ROOT:
        pytest.skip("a non-root server's own mode-000 file is plain permissions")
    program = token_dir / "tool"
    shutil.copy("/bin/true", program)
    with trio.fail_after(60):
        async with serving(masked=(str(program),)) as (client, _):
            record = await run(client, [str(program)], workspace, READ_ONLY)
    assert record.exit_code == 126 or record.exit_code == 127, (record.exit_code, record.stderr)
    assert_denied(record, "fs.execute", str(program))


# -- a non-root server -------------------------------------------------------------------------


def _user_exists(name: str) -> bool:
    return subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0


# What `exec-server serve` imports: this tree's packages and their dependencies.
_SERVER_MODULES: Final = (
    "protocol", "exec_server", "exec_client", "attr", "attrs", "cattrs", "trio", "trio_websocket", "wsproto",
    "h11", "outcome", "sniffio", "sortedcontainers", "idna", "psutil", "prometheus_client", "typing_extensions",
    "pybase64",
    "anyio",  # the client's (tests/test_cli_master.py runs one as the test user)
)  # fmt: skip


def _copy_for_the_test_user(home: Path) -> Path:
    import importlib

    target = Path(tempfile.mkdtemp(prefix="exec-view-site-"))
    target.chmod(0o755)
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    for name in _SERVER_MODULES:
        module = importlib.import_module(name)
        source = Path(module.__file__ or "")
        if source.name == "__init__.py":
            shutil.copytree(source.parent, target / source.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / source.name)
        for dist in owners.get(name, ()):  # their metadata too: some read their own version
            info = importlib.metadata.distribution(dist).locate_file("")
            for found in Path(str(info)).glob(f"{dist.replace('-', '_')}-*.dist-info"):
                if not (target / found.name).exists():
                    shutil.copytree(found, target / found.name)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644 | (path.stat().st_mode & 0o111))
    return target


@contextlib.asynccontextmanager
async def serve_as_the_test_user(home: Path, *extra: str) -> AsyncIterator[tuple[str, str, Path]]:
    """``exec-server serve`` run by the test user (workspaceWrite, audit off, then ``extra``),
    with this tree and the venv's packages; yields its URL, its token and the token file."""
    # The test user may not read this interpreter's site-packages or this checkout (under a
    # 0700 /root, as CI has them): it gets a copy of what the server imports.
    site = _copy_for_the_test_user(home)
    config = home / ".config" / "exec-view"
    config.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (config.parent, config):
        shutil.chown(path, TEST_USER, TEST_USER)
    token_file = config / "token"
    token = secrets.token_urlsafe(32)
    token_file.write_text(token + "\n")
    shutil.chown(token_file, TEST_USER, TEST_USER)
    token_file.chmod(0o600)
    argv = ["runuser", "-u", TEST_USER, "--", "env", f"PYTHONPATH={site}", f"HOME={home}"]
    argv += ["/usr/bin/python3", "-m", "exec_server", "serve", "--listen", "ws://127.0.0.1:0"]
    argv += ["--token-file", str(token_file), "--sandbox", "workspaceWrite", "--audit-denials", "off", *extra]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
    assert process.stdout is not None
    try:
        url = b""
        while not url.endswith(b"\n"):
            chunk = await process.stdout.receive_some(256)
            assert chunk, "the test user's server exited before printing its URL"
            url += chunk
        yield url.decode().strip(), token, token_file
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
        shutil.rmtree(config, ignore_errors=True)
        shutil.rmtree(site, ignore_errors=True)


@contextlib.asynccontextmanager
async def user_server(home: Path) -> AsyncIterator[tuple[Client, str]]:
    """A client of ``serve_as_the_test_user``'s server, and the path of its token file."""
    async with serve_as_the_test_user(home) as (url, token, token_file):
        async with open_client(url, token=token) as client:
            yield client, str(token_file)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the server as the test user")
async def test_a_non_root_server_gets_the_same_view(outside: Path) -> None:
    if not _user_exists(TEST_USER) or not os.path.exists("/usr/bin/python3"):
        pytest.skip(f"needs a user {TEST_USER!r} (useradd -m {TEST_USER}) and /usr/bin/python3")
    import pwd

    entry = pwd.getpwnam(TEST_USER)
    home = Path(entry.pw_dir)
    victim = home / "exec-view-victim"
    victim.write_text("mine\n")
    os.chown(victim, entry.pw_uid, entry.pw_gid)
    victim.chmod(0o644)
    with scratch("exec-view-user-ws-") as workspace:
        os.chown(workspace, entry.pw_uid, entry.pw_gid)
        (workspace / ".git").mkdir()
        os.chown(workspace / ".git", entry.pw_uid, entry.pw_gid)
        try:
            with trio.fail_after(120):
                async with user_server(home) as (client, token):
                    chmod = await run(client, ["chmod", "666", str(victim)], workspace)
                    etc = await run(client, ["touch", "/etc/exec-view-x"], workspace)
                    git = await run(client, ["touch", ".git/x"], workspace)
                    ok = await run(client, ["sh", "-c", 'echo a > f && echo b > "$TMPDIR/t" && id -u'], workspace)
                    cat_token = await run(client, ["cat", token], workspace, READ_ONLY)
                    ls_config = await run(client, ["ls", os.path.dirname(token)], workspace, READ_ONLY)
                    ps = await run(client, ["ps", "-eo", "pid="], workspace, READ_ONLY)
        finally:
            mode = stat.S_IMODE(victim.stat().st_mode)
            victim.unlink()
    assert mode == 0o644
    for record, path in ((chmod, str(victim)), (etc, "/etc/exec-view-x"), (git, str(workspace / ".git/x"))):
        assert record.exit_code != 0 and b"Read-only file system" in record.stderr, record.stderr
        assert record.sandbox_denied is True and record.sandbox_denied_source == "heuristic"
        assert ("fs", path) in [(d.blocker, d.target) for d in record.denials]
    assert not os.path.exists("/etc/exec-view-x")
    assert (ok.exit_code, ok.stdout) == (0, f"{entry.pw_uid}\n".encode()), ok.stderr
    assert cat_token.exit_code != 0 and b"Permission denied" in cat_token.stderr
    assert ls_config.exit_code != 0 and b"Permission denied" in ls_config.stderr
    assert ps.stdout.split() == [b"1", b"2"], ps.stdout


# -- the Python side ----------------------------------------------------------------------------


def test_masked_paths_are_the_token_and_its_private_directory_never_home_or_tmp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exec_server._cli import _masked_paths

    with scratch("exec-view-home-", 0o700) as home:
        monkeypatch.setenv("HOME", str(home))
        config = home / ".config" / "exec-server"
        config.mkdir(parents=True, mode=0o700)
        private = home / "keys"
        private.mkdir(mode=0o700)
        assert _masked_paths(()) == (str(config / "token"), str(config))
        assert set(_masked_paths((str(private / "t"),))) == {str(config / "token"), str(private / "t"), str(config), str(private)}
        # A token in the home itself or in /tmp: the file only, never the directory.
        assert str(home) not in _masked_paths((str(home / "t"),))
        assert "/tmp" not in _masked_paths(("/tmp/t",))


@pytest.mark.parametrize("subpaths", [["../x"], ["/abs"], [""], ["a/../../b"], [".git"] * 17])
def test_read_only_subpaths_are_relative_and_bounded(subpaths: list[str]) -> None:
    from protocol import ErrorCode, ProtocolError, decode

    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "process/start",
        "params": {"processId": "p", "argv": ["true"], "sandbox": {"mode": "workspaceWrite", "readOnlySubpaths": subpaths}},
    }
    import json

    with pytest.raises(ProtocolError) as caught:
        decode(json.dumps(request))
    assert caught.value.code == ErrorCode.INVALID_PARAMS
    assert "readOnlySubpaths" in caught.value.message or "read_only_subpaths" in caught.value.message


def test_the_launcher_gets_none_of_the_commands_environment(workspace: Path) -> None:
    sandbox = Sandbox.create(SandboxSettings(audit_denials="off", allow_unsandboxed=True))
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "/x.so", "EXEC_SERVER_TREE": "s:m"}
    for mode in (SandboxMode.READ_ONLY, SandboxMode.NONE):
        from protocol import SandboxPolicy

        plan = sandbox.prepare(SandboxPolicy(mode=mode), ["true"], str(workspace), dict(env))
        try:
            if mode is SandboxMode.NONE and plan.sandbox_type == "none" and "--env-fd" not in plan.argv:
                continue  # no PID namespace for unsandboxed commands here (a non-root server)
            assert plan.env == {"EXEC_SERVER_TREE": "s:m"}
            assert plan.command_env["LD_PRELOAD"] == "/x.so"
            fd = int(plan.argv[plan.argv.index("--env-fd") + 1])
            assert fd in plan.pass_fds
            assert os.pread(fd, 1 << 16, 0).split(b"\0")[:-1] == [f"{k}={v}".encode() for k, v in env.items()]
        finally:
            plan.cleanup()
            plan.cleanup()


def test_a_killed_servers_mask_placeholders_are_removed_by_the_next() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process now (and is not reused within this test)
    stale = Path(tempfile.gettempdir(), f"exec-server-masks-{dead.pid}-abcdef")
    (stale / "dir").mkdir(parents=True)
    (stale / "dir").chmod(0)
    live = Path(tempfile.gettempdir(), f"exec-server-masks-{os.getpid()}-abcdef")
    live.mkdir()
    try:
        Sandbox.create(SandboxSettings(audit_denials="off"))
        assert not stale.exists() and live.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


async def test_posix_semaphores_work_in_a_private_dev_shm(workspace: Path) -> None:
    script = "import multiprocessing, os\nlock = multiprocessing.Lock()\nwith lock: print(os.listdir('/dev/shm'))"
    with trio.fail_after(60):
        async with serving() as (client, _):
            record = await run(client, [sys.executable, "-c", script], workspace, READ_ONLY)
    assert (record.exit_code, record.sandbox_denied) == (0, False), record.stderr
    assert record.stdout.startswith(b"["), record.stdout  # its own: nothing of the host's /dev/shm
