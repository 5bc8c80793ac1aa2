"""The sandbox-escape corpus: what an attacker's command tries, through the real server.

Every case is blocked (the effect is checked: nothing read, nothing signalled, nothing
written), and reported in ``denials`` where the kernel refuses something the command can
see. Two kinds of attempt leave nothing to refuse, and say so in their assertions: the
server and other sessions' processes do not exist in a command's PID namespace (ESRCH,
ENOENT), another command's SysV and POSIX IPC objects do not exist in its IPC namespace and
its private /dev/shm, and a setuid or file-capability program simply runs without the privilege
(no_new_privs, nosuid): there is no failed call to report.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import trio

import exec_server.sandbox._sandbox as sandbox_module
from exec_client import Client, TerminalRecord, open_client
from exec_server import Server, ServerConfig, serve_websocket
from exec_server._cli import _masked_paths
from exec_server.sandbox import Launcher, Sandbox, SandboxSettings, detect
from exec_server.sandbox._build import compile_launcher, source_id
from protocol import SandboxMode

IS_ROOT: Final = os.geteuid() == 0
KERNEL: Final = detect()
READ_ONLY: Final = {"mode": "readOnly"}
WITH_NETWORK: Final = {"mode": "readOnly", "network": True}
PY: Final = sys.executable

pytestmark = [
    pytest.mark.skipif(KERNEL.landlock_abi < 6, reason="needs Landlock ABI 6 (signal scoping)"),
    pytest.mark.skipif(not IS_ROOT, reason="the corpus is run as root, as root containers run the server"),
]


@contextlib.contextmanager
def scratch(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workspace() -> Iterator[Path]:
    with scratch("exec-escape-ws-") as path:
        yield path


@pytest.fixture
def outside() -> Iterator[Path]:
    with scratch("exec-escape-out-", 0o777) as path:
        yield path


@contextlib.asynccontextmanager
async def serving(
    masked: tuple[str, ...] = (), token: str | None = None
) -> AsyncIterator[tuple[Client, Server, int]]:
    # allow_network: the connect-back case asks for network: true.
    settings = SandboxSettings(default_mode=SandboxMode.READ_ONLY, masked_paths=masked, allow_network=True)
    config = ServerConfig(token=token or secrets.token_urlsafe(32), sandbox=settings)
    server = Server(config, Sandbox.create(settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        listener = await nursery.start(serve_websocket, server, "127.0.0.1", 0)
        async with open_client(f"ws://127.0.0.1:{listener.port}", token=config.token) as client:
            if not server.sandbox.available:
                pytest.skip(f"no kernel sandbox here: {server.sandbox.unavailable_reason}")
            yield client, server, listener.port
        nursery.cancel_scope.cancel()


def blockers(record: TerminalRecord) -> list[tuple[str, str]]:
    return [(d.blocker, d.target) for d in record.denials]


def assert_reported(record: TerminalRecord, blocker: str, target: str | None = None) -> None:
    assert record.sandbox_denied is True, (record.denials, record.stderr)
    if record.sandbox_denied_source != "audit":
        return  # the heuristic only sees stderr: denied is all it can promise
    found = blockers(record)
    assert any(b == blocker and (target is None or t.startswith(target)) for b, t in found), found


async def run(client: Client, argv: list[str], cwd: Path, sandbox: dict[str, Any] = READ_ONLY, **kw: Any) -> TerminalRecord:
    return await client.run(argv, cwd=str(cwd), sandbox=sandbox, **kw)


# -- the token --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["default", "--token-file"])
async def test_reading_the_token_file_is_refused_and_reported(
    where: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with scratch("exec-escape-home-", 0o700) as home:
        monkeypatch.setenv("HOME", str(home))
        token = home / (".config/exec-server/token" if where == "default" else "secrets/server-token")
        token.parent.mkdir(parents=True, mode=0o700)
        secret = secrets.token_urlsafe(32)
        token.write_text(secret + "\n")
        token.chmod(0o600)
        home.chmod(0o755)  # the home itself stays visible: only the config is masked
        # As the CLI wires it (exec_server._cli): the file, and its private directory.
        masked = _masked_paths(() if where == "default" else (str(token),))
        with trio.fail_after(60):
            async with serving(masked) as (client, _, _):
                cat = await run(client, ["cat", str(token)], workspace)
                listing = await run(client, ["ls", "-la", str(token.parent)], workspace)
                grep = await run(client, ["grep", "-r", secret, str(home)], workspace)
    for record in (cat, listing, grep):
        assert secret.encode() not in record.stdout + record.stderr
        assert record.exit_code != 0, (record.stdout, record.stderr)
    assert_reported(cat, "fs.read_file", str(token))
    assert_reported(listing, "fs.read_file", str(token.parent))


# -- the server and other sessions --------------------------------------------------------------


async def test_the_servers_proc_entry_and_pid_do_not_exist_for_a_command(workspace: Path) -> None:
    probe = (
        "import os, signal\n"
        f"for path in ('/proc/{os.getpid()}/environ', '/proc/{os.getpid()}/mem'):\n"
        "    try: open(path, 'rb').read(); print('read')\n"
        "    except OSError as exc: print(exc.errno)\n"
        f"try: os.kill({os.getpid()}, signal.SIGKILL); print('signalled')\n"
        "except OSError as exc: print(exc.errno)\n"
    )
    with trio.fail_after(60):
        async with serving() as (client, _, _):
            record = await run(client, [PY, "-c", probe], workspace)
    # Not refused but absent: the server is outside the command's PID namespace.
    assert record.stdout == b"2\n2\n3\n", record.stderr  # ENOENT, ENOENT, ESRCH


async def test_signalling_or_ptracing_the_init_is_refused_and_reported(workspace: Path) -> None:
    # PID 1 (the launcher's init) is the one process outside the command it can see.
    probe = (
        "import ctypes, os, signal\n"
        "try: os.kill(1, signal.SIGTERM); print('signalled')\n"
        "except OSError as exc: print(exc.errno)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n"  # PTRACE_ATTACH
        "try: open('/proc/1/environ', 'rb').read(); print('read')\n"
        "except OSError as exc: print(exc.errno)\n"
    )
    with trio.fail_after(60):
        async with serving() as (client, _, _):
            record = await run(client, [PY, "-c", probe], workspace)
    assert record.stdout == b"1\n-1 1\n13\n", record.stderr  # EPERM, EPERM, EACCES
    assert_reported(record, "scope.signal")
    assert_reported(record, "ptrace")


async def test_another_sessions_command_cannot_be_seen_signalled_or_read(workspace: Path) -> None:
    with trio.fail_after(60):
        async with serving() as (client, server, port):
            async with open_client(f"ws://127.0.0.1:{port}", token=server.config.token) as other:
                victim = await other.start(["sleep", "30"], cwd=str(workspace), sandbox=READ_ONLY)
                pid = victim.pid
                probe = (
                    "import os, signal\n"
                    f"try: os.kill({pid}, signal.SIGKILL); print('signalled')\n"
                    "except OSError as exc: print(exc.errno)\n"
                    f"print(os.path.exists('/proc/{pid}'))\n"
                )
                record = await run(client, [PY, "-c", probe], workspace)
                assert await victim.signal("terminate")
                ended = await victim.wait()
    assert record.stdout == b"3\nFalse\n", record.stderr  # ESRCH: not in this namespace
    assert ended.signal == "SIGTERM"  # it was alive until the test ended it


async def test_sysv_and_posix_ipc_are_private_to_each_command(workspace: Path) -> None:
    if shutil.which("ipcmk") is None:
        pytest.skip("needs util-linux ipcmk")
    make = "ipcmk -M 4096 -p 0666 >/dev/null; echo secret > /dev/shm/exec-escape; ipcs -m; sleep 30"
    with trio.fail_after(60):
        async with serving() as (client, server, port):
            async with open_client(f"ws://127.0.0.1:{port}", token=server.config.token) as other:
                holder = await other.start(["sh", "-c", make], cwd=str(workspace), sandbox=READ_ONLY)
                seen_by_holder = b""
                async for chunk in holder:  # its segment and file exist once ipcs lists it
                    seen_by_holder += chunk.chunk
                    if b"0x" in seen_by_holder:
                        break
                key = seen_by_holder.split(b"0x", 1)[1].split()[0].decode()
                lookup = (
                    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                    f"print(libc.shmget(0x{key}, 0, 0), ctypes.get_errno())\n"
                    "print(os.listdir('/dev/shm'))\n"
                )
                seen = await run(client, ["ipcs", "-m"], workspace)
                record = await run(client, [PY, "-c", lookup], workspace)
                host_sees_file = os.path.exists("/dev/shm/exec-escape")
                await holder.signal("kill")
                await holder.wait()
    assert b"0x" not in seen.stdout.split(b"key", 1)[-1], seen.stdout
    # ENOENT for the other command's key, and an empty /dev/shm of its own.
    assert record.stdout == b"-1 2\n[]\n", record.stderr
    assert not host_sees_file


# -- network on: connecting back ---------------------------------------------------------------


async def test_connecting_back_with_network_on_gets_nowhere_without_the_token(workspace: Path) -> None:
    with scratch("exec-escape-config-", 0o700) as config:
        token = config / "token"
        secret = secrets.token_urlsafe(32)
        token.write_text(secret + "\n")
        with trio.fail_after(60):
            async with serving(masked=(str(token), str(config)), token=secret) as (client, _, port):
                attack = (
                    "import socket\n"
                    "try: key = open(%r).read().strip()\n"
                    "except OSError as exc: key = ''; print('token', exc.errno)\n"
                    "s = socket.create_connection(('127.0.0.1', %d), timeout=5)\n"
                    "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n"
                    "          b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n'\n"
                    "          b'Sec-WebSocket-Protocol: bearer.' + key.encode() + b'\\r\\n\\r\\n')\n"
                    "print(s.recv(64).split(b'\\r\\n')[0].decode())\n"
                ) % (str(token), port)
                record = await run(client, [PY, "-c", attack], workspace, WITH_NETWORK, env={})
    lines = record.stdout.decode().splitlines()
    assert lines[0] == "token 13", record.stderr
    assert not lines[1].startswith("HTTP/1.1 101"), lines  # refused: no token, no session
    assert_reported(record, "fs.read_file", str(token))


# -- LD_PRELOAD and a dynamically linked launcher -----------------------------------------------

PRELOAD_C: Final = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    char comm[32] = {0}, path[4200];
    int fd = open("/proc/self/comm", O_RDONLY);
    if (fd >= 0) { read(fd, comm, sizeof comm - 1); close(fd); }
    comm[strcspn(comm, "\n")] = 0;
    snprintf(path, sizeof path, "%s/pwned-%s", OUTSIDE, comm);
    fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}
"""


async def test_ld_preload_never_reaches_a_dynamically_linked_launcher(
    workspace: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler")
    source = Path(sandbox_module.__file__).with_name("launcher.c")
    dynamic = compile_launcher(source, outside / "bin" / "launcher", static=False)
    assert b"NEEDED" in subprocess.run(["readelf", "-d", str(dynamic)], capture_output=True).stdout
    (outside / "pwn.c").write_text(PRELOAD_C)
    library = outside / "pwn.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", f'-DOUTSIDE="{outside}"', "-o", str(library), str(outside / "pwn.c")], check=True
    )
    monkeypatch.setattr(sandbox_module, "find_launcher", lambda: Launcher(str(dynamic), source_id(source)))
    with trio.fail_after(60):
        async with serving() as (client, server, _):
            assert server.sandbox.available
            record = await run(client, ["true"], workspace, env={"LD_PRELOAD": str(library)})
    # The command loaded it (inside the sandbox, where its write is refused); the launcher,
    # root and unconfined until it applies the policy, never did.
    assert sorted(p.name for p in outside.iterdir() if p.name.startswith("pwned")) == []
    assert record.exit_code == 0
    assert_reported(record, "fs.write_file", f"{outside}/")  # the name is not in the records


# -- setuid and file capabilities ----------------------------------------------------------------


async def test_setuid_and_file_capability_programs_gain_nothing(workspace: Path, outside: Path) -> None:
    setuid = outside / "setuid-id"
    shutil.copy("/usr/bin/id", setuid)
    os.chown(setuid, 65534, 65534)
    setuid.chmod(0o4755)
    capable = outside / "capable-python"
    shutil.copy(os.path.realpath(PY), capable)
    caps = "cap_dac_override,cap_sys_admin+ep"
    if shutil.which("setcap") is None or subprocess.run(["setcap", caps, str(capable)]).returncode != 0:
        pytest.skip("needs setcap")
    probe = "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])"
    with trio.fail_after(60):
        async with serving() as (client, _, _):
            uid = await run(client, [str(setuid), "-u"], workspace)
            cap = await run(client, [str(capable), "-c", probe], workspace)
    assert (uid.exit_code, uid.stdout) == (0, b"0\n"), uid.stderr  # no switch to the file's owner
    assert (cap.exit_code, cap.stdout) == (0, b"0000000000000000\n"), cap.stderr
