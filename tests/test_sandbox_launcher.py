"""The sandbox launcher and the Python side that plans it, against the real kernel.

Every sandboxed command here really runs under the launcher (its own mount, PID, IPC and
network namespaces with a read-only view of the host, Landlock, seccomp, no capability),
and every "denied" test checks the effect too: the file does not exist, the listener saw
no connection. Directories live directly under /tmp: commands keep the server's uid but
no CAP_DAC_OVERRIDE, so another user's 0700 parent (pytest's tmp_path) would keep them out.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio

import exec_server.sandbox._sandbox as sandbox_module
from exec_server.sandbox import (
    KernelSupport,
    LaunchPlan,
    Sandbox,
    SandboxSettings,
    SandboxUnavailable,
    detect,
    find_launcher,
)
from exec_server.sandbox._launcher import EXIT_EXEC_FAILED, EXIT_SETUP_FAILED
from protocol import SandboxMode, SandboxPolicy

TIMEOUT_S: Final = 20.0
IS_ROOT: Final = os.geteuid() == 0
NOBODY: Final = 65534
# The venv's interpreter (under /root when the tests run as root): the view keeps it readable.
PY: Final = sys.executable
BASE_ENV: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
SETTINGS: Final = SandboxSettings(audit_denials="off")
KERNEL: Final = detect()

needs_sandbox = pytest.mark.skipif(KERNEL.landlock_abi < 3, reason="kernel without Landlock ABI 3")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs a root server")

pytestmark = needs_sandbox


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    created = Sandbox.create(SETTINGS)
    assert created.available, created.unavailable_reason
    return created


def _scratch_dir(mode: int) -> Path:
    path = Path(tempfile.mkdtemp(prefix="sandbox-test-", dir="/tmp"))
    path.chmod(mode)
    return path


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A workspace the server's uid owns (root's own when the tests run as root)."""
    path = _scratch_dir(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A world-writable directory outside the workspace: only the sandbox stands in the way."""
    path = _scratch_dir(0o777)
    path.chmod(0o777)  # mkdtemp's mode is masked by the umask
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _policy(mode: SandboxMode, *, roots: tuple[str, ...] = (), network: bool = False) -> SandboxPolicy:
    return SandboxPolicy(mode=mode, writable_roots=roots, network=network)


async def _run(plan: LaunchPlan, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT_S):
        try:
            return await trio.run_process(
                plan.argv,
                cwd=str(cwd),
                env=plan.env,
                pass_fds=plan.pass_fds,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        finally:
            plan.cleanup()


async def _sandboxed(
    sandbox: Sandbox, cwd: Path, argv: list[str], mode: SandboxMode = SandboxMode.WORKSPACE_WRITE, **policy: object
) -> subprocess.CompletedProcess[bytes]:
    plan = sandbox.prepare(_policy(mode, **policy), argv, str(cwd), dict(BASE_ENV))  # type: ignore[arg-type]
    assert plan.sandbox_type == "landlock"
    return await _run(plan, cwd)


def _python(code: str) -> list[str]:
    return [PY, "-c", code]


# -- filesystem --------------------------------------------------------------------------


async def test_write_outside_the_workspace_is_refused(sandbox: Sandbox, workspace: Path, outside: Path) -> None:
    target = outside / "touched"
    result = await _sandboxed(sandbox, workspace, ["touch", str(target)])
    assert result.returncode == 1
    assert b"Read-only file system" in result.stderr
    assert not target.exists()


async def test_dash_redirect_and_python_open_outside_are_refused(
    sandbox: Sandbox, workspace: Path, outside: Path
) -> None:
    redirect = await _sandboxed(sandbox, workspace, ["dash", "-c", f"echo x > {outside}/redirected"])
    opened = await _sandboxed(sandbox, workspace, _python(f"open({str(outside / 'opened')!r}, 'w')"))
    assert redirect.returncode != 0 and opened.returncode != 0
    assert b"Read-only file system" in opened.stderr
    assert list(outside.iterdir()) == []


async def test_create_in_etc_is_refused(sandbox: Sandbox, workspace: Path) -> None:
    result = await _sandboxed(sandbox, workspace, ["touch", "/etc/exec-sandbox-test"])
    assert result.returncode == 1
    assert not os.path.exists("/etc/exec-sandbox-test")


async def test_write_inside_the_workspace_and_its_temp_dir_works(sandbox: Sandbox, workspace: Path) -> None:
    script = 'echo in > inside.txt && mkdir sub && echo t > "$TMPDIR/t" && cat "$TMPDIR/t" && echo "$TMPDIR"'
    result = await _sandboxed(sandbox, workspace, ["sh", "-c", script])
    assert result.returncode == 0, result.stderr
    assert (workspace / "inside.txt").read_text() == "in\n"
    assert (workspace / "sub").is_dir()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "t"
    temp = lines[1]
    assert temp != str(workspace) and not os.path.exists(temp), "the plan's cleanup removes the temp dir"


async def test_writable_roots_are_writable(sandbox: Sandbox, workspace: Path, outside: Path) -> None:
    result = await _sandboxed(sandbox, workspace, ["touch", str(outside / "granted")], roots=(str(outside),))
    assert result.returncode == 0, result.stderr
    assert (outside / "granted").exists()


async def test_read_only_refuses_writes_in_cwd_but_allows_reads_and_dev_null(
    sandbox: Sandbox, workspace: Path
) -> None:
    (workspace / "existing").write_text("old")
    # /dev/stdout is /proc/self/fd/1, the server's pipe: reopening it must work after the
    # uid drop too (the launcher hands the command its pipes).
    script = "cat /etc/hostname >/dev/null && echo hi > /dev/null && echo read-ok > /dev/stdout"
    script += " && echo err > /dev/stderr; echo x > new; echo x > existing"
    result = await _sandboxed(sandbox, workspace, ["sh", "-c", script], mode=SandboxMode.READ_ONLY)
    assert result.stdout == b"read-ok\n"
    assert result.stderr.startswith(b"err\n")
    assert result.returncode != 0
    assert not (workspace / "new").exists()
    assert (workspace / "existing").read_text() == "old"


async def test_truncate_outside_is_refused(sandbox: Sandbox, workspace: Path, outside: Path) -> None:
    victim = outside / "victim"
    victim.write_text("keep me")
    victim.chmod(0o666)
    result = await _sandboxed(sandbox, workspace, _python(f"import os; os.truncate({str(victim)!r}, 0)"))
    assert result.returncode != 0
    assert victim.read_text() == "keep me"


async def test_a_grandchild_inherits_the_restrictions(sandbox: Sandbox, workspace: Path, outside: Path) -> None:
    target = outside / "from-grandchild"
    script = f"import subprocess; subprocess.run(['sh', '-c', 'sh -c \"touch {target}\"; echo rc=$?'])"
    result = await _sandboxed(sandbox, workspace, _python(script))
    assert result.stdout == b"rc=1\n"
    assert not target.exists()


async def test_running_a_compiler_in_the_workspace_works(sandbox: Sandbox, workspace: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    (workspace / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hello");return 0;}\n')
    result = await _sandboxed(sandbox, workspace, ["sh", "-c", "cc -o hello hello.c && ./hello"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\n"


# -- root's power --------------------------------------------------------------------------


async def test_the_command_keeps_the_servers_uid(sandbox: Sandbox, workspace: Path) -> None:
    script = "import os; print(os.getresuid(), os.getresgid())"
    result = await _sandboxed(sandbox, workspace, _python(script))
    uid, gid = os.getuid(), os.getgid()
    assert result.stdout.decode().strip() == f"({uid}, {uid}, {uid}) ({gid}, {gid}, {gid})", result.stderr


async def test_no_capabilities_and_no_new_privs(sandbox: Sandbox, workspace: Path) -> None:
    result = await _sandboxed(sandbox, workspace, ["cat", "/proc/self/status"], mode=SandboxMode.READ_ONLY)
    status = dict(line.split(":\t", 1) for line in result.stdout.decode().splitlines() if ":\t" in line)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, key
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"


@needs_root
async def test_chmod_and_chown_outside_the_workspace_are_refused(
    sandbox: Sandbox, workspace: Path, outside: Path
) -> None:
    victim = outside / "root-owned"
    victim.write_text("x")
    victim.chmod(0o644)
    script = (
        f"import os\n"
        f"for f in (lambda: os.chmod({str(victim)!r}, 0o777), lambda: os.chown({str(victim)!r}, {NOBODY}, {NOBODY}),\n"
        f"          lambda: os.utime({str(victim)!r}, (0, 0)), lambda: os.setxattr({str(victim)!r}, 'user.x', b'1'),\n"
        f"          lambda: os.rename({str(victim)!r}, {str(victim)!r} + '.moved'),\n"
        f"          lambda: os.link({str(victim)!r}, {str(workspace / 'linked')!r})):\n"
        f"    try: f(); print('done')\n"
        f"    except OSError as exc: print(exc.errno)\n"
    )
    mtime = victim.stat().st_mtime
    result = await _sandboxed(sandbox, workspace, _python(script))
    # EROFS from the read-only view; a link into the workspace crosses mounts (EXDEV).
    assert result.stdout == (f"{errno.EROFS}\n" * 5 + f"{errno.EXDEV}\n").encode(), result.stderr
    assert victim.stat().st_mtime == mtime and not (workspace / "linked").exists()
    info = victim.stat()
    assert stat.S_IMODE(info.st_mode) == 0o644 and info.st_uid == 0


@needs_root
async def test_hostname_cannot_be_changed(sandbox: Sandbox, workspace: Path) -> None:
    before = socket.gethostname()
    result = await _sandboxed(sandbox, workspace, _python("import socket; socket.sethostname('pwned')"))
    assert result.returncode != 0
    assert socket.gethostname() == before


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a controlling terminal")
async def test_the_command_loses_the_servers_controlling_terminal(sandbox: Sandbox, workspace: Path) -> None:
    # script(1) runs its command with a pseudo-terminal as controlling terminal, as a
    # server started from a shell would have. The command must not reach it (TIOCSTI).
    probe = "import os\ntry: os.open('/dev/tty', os.O_WRONLY); print('tty')\nexcept OSError as exc: print(exc.errno)"
    plan = sandbox.prepare(_policy(SandboxMode.READ_ONLY, network=True), _python(probe), str(workspace), dict(BASE_ENV))
    wrapped = ["script", "-qec", shlex.join(plan.argv), "/dev/null"]
    result = await _run(attrs.evolve(plan, argv=wrapped), workspace)
    assert result.stdout.strip() == str(errno.ENXIO).encode(), (result.stdout, result.stderr)


@needs_root
async def test_commands_of_the_same_uid_cannot_signal_or_inspect_each_other(
    sandbox: Sandbox, workspace: Path
) -> None:
    # Every command runs as the server's uid: what keeps them apart is that each has its own
    # PID namespace (the other's pid does not exist there) and its own Landlock domain.
    env = {**BASE_ENV, "SECRET": "s3"}
    plan = sandbox.prepare(_policy(SandboxMode.READ_ONLY), ["sleep", "30"], str(workspace), env)
    with trio.fail_after(TIMEOUT_S):
        victim = await trio.lowlevel.open_process(plan.argv, cwd=str(workspace), env=plan.env, pass_fds=plan.pass_fds)
        try:
            probe = (
                "import os, signal\n"
                f"try: open('/proc/{victim.pid}/environ').read(); print('read')\n"
                "except OSError as exc: print(exc.errno)\n"
                f"try: os.kill({victim.pid}, signal.SIGTERM); print('killed')\n"
                "except OSError as exc: print(exc.errno)\n"
            )
            result = await _sandboxed(sandbox, workspace, _python(probe), mode=SandboxMode.READ_ONLY)
            assert result.stdout == f"{errno.ENOENT}\n{errno.ESRCH}\n".encode(), result.stderr
            assert victim.poll() is None
        finally:
            victim.kill()
            await victim.wait()


# -- network -------------------------------------------------------------------------------


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


def _nothing_arrived(listener: socket.socket) -> bool:
    # The command has exited: a connection that got through would be waiting in the backlog.
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


CONNECT: Final = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5)
    print("connected")
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


async def test_tcp_connect_to_a_loopback_listener_does_not_reach_it(sandbox: Sandbox, workspace: Path) -> None:
    with _listener() as listener:
        port = listener.getsockname()[1]
        result = await _sandboxed(sandbox, workspace, _python(CONNECT.format(port=port)))
        assert result.stdout == b"PermissionError 13\n", result.stderr
        assert _nothing_arrived(listener)


async def test_tcp_connect_works_when_the_policy_allows_network(sandbox: Sandbox, workspace: Path) -> None:
    # The control for the test above: same command, same listener, network allowed.
    with _listener() as listener:
        port = listener.getsockname()[1]
        result = await _sandboxed(sandbox, workspace, _python(CONNECT.format(port=port)), network=True)
        assert result.stdout == b"connected\n", result.stderr
        assert not _nothing_arrived(listener)


async def test_udp_send_fails(sandbox: Sandbox, workspace: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        script = (
            "import socket\n"
            "try:\n"
            f"    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))\n"
            "    print('sent')\n"
            "except OSError as exc: print(exc.errno)\n"
        )
        result = await _sandboxed(sandbox, workspace, _python(script))
        assert result.stdout == b"13\n", result.stderr
        with pytest.raises(BlockingIOError):
            receiver.recv(16)


async def test_other_socket_families_are_refused(sandbox: Sandbox, workspace: Path) -> None:
    script = (
        "import socket\n"
        "for fam, typ in ((socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW),\n"
        "                 (socket.AF_INET6, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_RAW)):\n"
        "    try: socket.socket(fam, typ); print('created')\n"
        "    except OSError as exc: print(exc.errno)\n"
    )
    result = await _sandboxed(sandbox, workspace, _python(script))
    assert result.stdout == b"13\n13\n13\n13\n", result.stderr


async def test_af_unix_still_works(sandbox: Sandbox, workspace: Path) -> None:
    script = (
        "import socket\n"
        "a, b = socket.socketpair(); a.sendall(b'pair'); print(b.recv(4).decode())\n"
        "server = socket.socket(socket.AF_UNIX); server.bind('s.sock'); server.listen()\n"
        "client = socket.socket(socket.AF_UNIX); client.connect('s.sock')\n"
        "conn, _ = server.accept(); client.sendall(b'path'); print(conn.recv(4).decode())\n"
    )
    result = await _sandboxed(sandbox, workspace, _python(script))
    assert result.stdout == b"pair\npath\n", result.stderr


async def test_the_command_sees_an_empty_network_namespace(sandbox: Sandbox, workspace: Path) -> None:
    script = (
        "import os\n"
        "print([line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]])\n"
        "links = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try: links.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
        "    except FileNotFoundError: pass  # listdir's own fd\n"
        "print(any(link.startswith('net:') for link in links))\n"
        "import fcntl, socket, struct\n"
        "ifreq = fcntl.ioctl(socket.socket(socket.AF_UNIX), 0x8913, struct.pack('16sH14x', b'lo', 0))\n"
        "print('up' if struct.unpack('16sH14x', ifreq)[1] & 1 else 'down')\n"  # SIOCGIFFLAGS, IFF_UP
    )
    result = await _sandboxed(sandbox, workspace, _python(script), mode=SandboxMode.READ_ONLY)
    # Only a loopback that is down, and the namespace fd did not leak into the command.
    assert result.stdout == b"['lo']\nFalse\ndown\n", result.stderr


async def test_sandboxed_commands_cannot_reach_each_others_abstract_sockets(
    sandbox: Sandbox, workspace: Path
) -> None:
    # Root servers share one empty network namespace, and abstract unix sockets live in
    # the network namespace: Landlock's scoping is what keeps two commands apart.
    if sandbox.kernel.landlock_abi < 6 and sandbox.capabilities()["networkNamespace"] == "shared-empty":
        pytest.fail("a shared namespace needs Landlock scoping (ABI 6)")
    name = f"exec-sandbox-test-{os.getpid()}"
    serve = (
        "import socket, sys\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind('\\0{name}'); s.listen()\n"
        "c = socket.socket(socket.AF_UNIX); c.connect('\\0" + name + "'); print('self-ok', flush=True)\n"
        "sys.stdin.read()\n"
    )
    plan = sandbox.prepare(_policy(SandboxMode.READ_ONLY), _python(serve), str(workspace), dict(BASE_ENV))
    with trio.fail_after(TIMEOUT_S):
        server = await trio.lowlevel.open_process(
            plan.argv, cwd=str(workspace), env=plan.env, pass_fds=plan.pass_fds,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert server.stdin is not None and server.stdout is not None
        try:
            assert await server.stdout.receive_some(64) == b"self-ok\n"
            connect = (
                "import socket\n"
                f"try: socket.socket(socket.AF_UNIX).connect('\\0{name}'); print('connected')\n"
                "except OSError as exc: print(exc.errno)\n"
            )
            other = await _sandboxed(sandbox, workspace, _python(connect), mode=SandboxMode.READ_ONLY)
            assert other.stdout == b"1\n", other.stderr  # EPERM from Landlock's scope
        finally:
            await server.stdin.aclose()
            await server.wait()


# -- launcher contract -----------------------------------------------------------------------


async def test_a_missing_program_exits_127_with_a_message(sandbox: Sandbox, workspace: Path) -> None:
    result = await _sandboxed(sandbox, workspace, ["no-such-program-xyz"])
    assert result.returncode == EXIT_EXEC_FAILED
    assert b"cannot execute 'no-such-program-xyz'" in result.stderr


async def test_a_setup_failure_exits_125_and_runs_nothing(workspace: Path, outside: Path) -> None:
    launcher = find_launcher()
    marker = outside / "ran"
    argv = [launcher.path, "--abi", "7", "--mode", "workspaceWrite", "--rw", "/no/such/dir", "--net", "0"]
    plan = LaunchPlan([*argv, "--", "touch", str(marker)], dict(BASE_ENV), (), "landlock")
    # The init's failed setup kills the waiting command with the namespace: repeated, since
    # which of the two the kernel ends first varies (a command killed so was reported -9).
    for _ in range(20):
        result = await _run(plan, workspace)
        assert result.returncode == EXIT_SETUP_FAILED
        assert b"sandbox setup failed: bind /no/such/dir" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["none", "readOnly"])
def test_a_signal_right_after_the_start_is_never_lost(mode: str) -> None:
    """The server may signal a command the moment its start is answered: before the launcher
    forked it, or while it still runs the launcher's code. Each such signal must end it."""
    launcher = find_launcher()
    sandbox_args = ["--mode", "none"] if mode == "none" else ["--abi", str(KERNEL.landlock_abi), "--mode", mode, "--net", "1"]
    argv = [launcher.path, *sandbox_args, "--", "sleep", "30"]
    for attempt in range(60):
        child = subprocess.Popen(argv, env=BASE_ENV, start_new_session=True, stderr=subprocess.PIPE)
        # Sweeps the signal across the launcher's first milliseconds (not a synchronisation:
        # every point of the sweep must give the same answer).
        time.sleep((attempt % 20) * 0.0001)
        os.killpg(child.pid, signal.SIGHUP)
        try:
            _, stderr = child.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            pytest.fail(f"the SIGHUP sent {(attempt % 20) * 0.1:.1f} ms after the start was lost")
        assert child.returncode == -signal.SIGHUP, stderr


async def test_a_kernel_older_than_the_plan_is_a_setup_failure(workspace: Path) -> None:
    launcher = find_launcher()
    argv = [launcher.path, "--abi", str(KERNEL.landlock_abi + 1), "--mode", "readOnly", "--net", "1", "--", "true"]
    result = await _run(LaunchPlan(argv, dict(BASE_ENV), (), "landlock"), workspace)
    assert result.returncode == EXIT_SETUP_FAILED
    assert b"older than the planned ABI" in result.stderr


@pytest.mark.skipif(not IS_ROOT, reason="needs root to start the launcher as another user")
async def test_a_non_root_server_gets_a_user_and_network_namespace(workspace: Path, outside: Path) -> None:
    # What a server not running as root does: unshare needs a user namespace. The binary and
    # the interpreter must be reachable for that user (root's cache and pyenv are not).
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs a system python3 that another user can run")
    launcher = shutil.copy(find_launcher().path, outside / "launcher")
    os.chmod(workspace, 0o777)
    argv = [str(launcher), "--abi", str(KERNEL.landlock_abi), "--mode", "workspaceWrite"]
    argv += ["--rw", str(workspace), "--net", "0", "--", "/usr/bin/python3", "-c"]
    argv += [
        "import os, socket\n"
        "print(os.getuid())\n"
        f"open({str(workspace / 'in')!r}, 'w')\n"
        f"try: open({str(outside / 'out')!r}, 'w')\n"
        "except OSError as exc: print(exc.errno)\n"
        "try: socket.create_connection(('127.0.0.1', 9), timeout=5)\n"
        "except OSError as exc: print(exc.errno)\n"
    ]
    with trio.fail_after(TIMEOUT_S):
        result = await trio.run_process(
            argv, cwd=str(workspace), env=BASE_ENV, user=NOBODY, group=NOBODY, extra_groups=[],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.stdout == f"{NOBODY}\n{errno.EROFS}\n13\n".encode(), result.stderr
    assert (workspace / "in").exists() and not (outside / "out").exists()
    os.unlink(launcher)


async def test_an_older_abi_plan_still_confines(workspace: Path, outside: Path) -> None:
    # A kernel that offers only ABI 3 (no Landlock network rules): seccomp alone keeps TCP off.
    old = Sandbox(SETTINGS, attrs.evolve(KERNEL, landlock_abi=3), find_launcher())
    script = "import socket\ntry: socket.socket()\nexcept OSError as e: print(e.errno)\n"
    script += f"open({str(outside / 'x')!r}, 'w')"
    result = await _sandboxed(old, workspace, _python(script))
    assert result.stdout == b"13\n"
    assert b"Read-only file system" in result.stderr
    assert not (outside / "x").exists()


# -- the Python side: policy, detection seam ----------------------------------------------


@pytest.mark.parametrize("abi", [0, 1, 2])
def test_a_kernel_without_enough_landlock_refuses_every_sandboxed_request(
    monkeypatch: pytest.MonkeyPatch, workspace: Path, abi: int
) -> None:
    monkeypatch.setattr(sandbox_module, "detect", lambda: attrs.evolve(KERNEL, landlock_abi=abi))
    weak = Sandbox.create(SETTINGS)
    assert weak.capabilities()["available"] is False
    assert weak.capabilities()["modes"] == []
    for mode in (SandboxMode.READ_ONLY, SandboxMode.WORKSPACE_WRITE):
        with pytest.raises(SandboxUnavailable, match="Landlock"):
            weak.prepare(_policy(mode), ["true"], str(workspace), dict(BASE_ENV))


def test_without_network_isolation_only_network_true_policies_run(
    monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    monkeypatch.setattr(sandbox_module, "detect", lambda: attrs.evolve(KERNEL, network_namespace=False))
    partial = Sandbox.create(SETTINGS)
    assert partial.capabilities()["available"] is True
    assert partial.capabilities()["network"] is False
    with pytest.raises(SandboxUnavailable, match="network"):
        partial.prepare(_policy(SandboxMode.READ_ONLY), ["true"], str(workspace), dict(BASE_ENV))
    plan = partial.prepare(_policy(SandboxMode.READ_ONLY, network=True), ["true"], str(workspace), dict(BASE_ENV))
    assert plan.sandbox_type == "landlock" and "--net" in plan.argv


def test_root_without_the_capabilities_to_build_the_view_is_refused(
    monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    monkeypatch.setattr(sandbox_module, "detect", lambda: attrs.evolve(KERNEL, root=True, namespaces=False))
    stuck = Sandbox.create(SETTINGS)
    with pytest.raises(SandboxUnavailable, match="CAP_SYS_ADMIN"):
        stuck.prepare(_policy(SandboxMode.READ_ONLY), ["true"], str(workspace), dict(BASE_ENV))


def test_a_missing_launcher_makes_the_sandbox_unavailable(workspace: Path) -> None:
    without = Sandbox(SETTINGS, KERNEL, None)
    assert without.capabilities()["available"] is False
    with pytest.raises(SandboxUnavailable, match="launcher"):
        without.prepare(_policy(SandboxMode.READ_ONLY), ["true"], str(workspace), dict(BASE_ENV))


def test_mode_none_is_refused_unless_allowed(sandbox: Sandbox, workspace: Path) -> None:
    none = _policy(SandboxMode.NONE)
    with pytest.raises(SandboxUnavailable, match="allow-unsandboxed"):
        sandbox.resolve(none)
    with pytest.raises(SandboxUnavailable, match="allow-unsandboxed"):
        sandbox.prepare(none, ["true"], str(workspace), dict(BASE_ENV))
    permissive = Sandbox(SandboxSettings(allow_unsandboxed=True, audit_denials="off"), KERNEL, None)
    assert permissive.resolve(none) == none
    plan = permissive.prepare(none, ["true"], str(workspace), dict(BASE_ENV))
    assert (plan.argv, plan.sandbox_type) == (["true"], "none")
    assert "none" in permissive.capabilities()["modes"]


def test_resolve_applies_the_operator_default(sandbox: Sandbox) -> None:
    assert sandbox.resolve(None) == SandboxPolicy(mode=SandboxMode.READ_ONLY)
    strict = Sandbox(SandboxSettings(default_mode=SandboxMode.WORKSPACE_WRITE, audit_denials="off"), KERNEL, None)
    assert strict.resolve(None).mode is SandboxMode.WORKSPACE_WRITE


def test_writable_roots_must_exist(sandbox: Sandbox, workspace: Path) -> None:
    policy = _policy(SandboxMode.WORKSPACE_WRITE, roots=("/no/such/root",))
    with pytest.raises(SandboxUnavailable, match="does not exist"):
        sandbox.prepare(policy, ["true"], str(workspace), dict(BASE_ENV))


def test_read_only_grants_no_writable_roots_and_no_temp_dir(sandbox: Sandbox, workspace: Path) -> None:
    plan = sandbox.prepare(
        _policy(SandboxMode.READ_ONLY, roots=(str(workspace),)), ["true"], str(workspace), dict(BASE_ENV)
    )
    assert "--rw" not in plan.argv and "TMPDIR" not in plan.command_env
    assert plan.argv[plan.argv.index("--") + 1 :] == ["true"]


def test_the_temp_dir_belongs_to_the_servers_uid(sandbox: Sandbox, workspace: Path) -> None:
    plan = sandbox.prepare(_policy(SandboxMode.WORKSPACE_WRITE), ["true"], str(workspace), dict(BASE_ENV))
    try:
        temp = Path(plan.command_env["TMPDIR"])
        assert plan.command_env["TMP"] == plan.command_env["TEMP"] == str(temp)
        assert temp.stat().st_uid == os.geteuid()
        assert stat.S_IMODE(temp.stat().st_mode) == 0o700
        assert str(temp) in plan.writable_roots
    finally:
        plan.cleanup()
        plan.cleanup()  # idempotent
    assert not temp.exists()


def test_capabilities_report_what_the_kernel_enforces(sandbox: Sandbox) -> None:
    caps = sandbox.capabilities()
    assert caps["available"] is True and caps["types"] == ["landlock"]
    assert caps["modes"] == ["readOnly", "workspaceWrite"]
    assert caps["landlockAbi"] == KERNEL.landlock_abi
    assert caps["network"] is (KERNEL.network_namespace and KERNEL.seccomp_filter)
    assert caps["denialSource"] == "heuristic"  # audit_denials="off" in these tests


def test_a_stale_or_missing_binary_is_rebuilt_into_the_cache(workspace: Path) -> None:
    package = workspace / "pkg"
    package.mkdir()
    shutil.copy(Path(sandbox_module.__file__).with_name("launcher.c"), package / "launcher.c")
    cache = workspace / "cache"
    first = find_launcher(package_dir=package, cache_dir=cache)
    assert Path(first.path).parent == cache and first.path.endswith(first.source_id)
    assert subprocess.run([first.path, "--source-id"], capture_output=True, text=True).stdout.strip() == first.source_id
    # An edit changes the hash: a new binary, not the stale one.
    with open(package / "launcher.c", "a") as source:
        source.write("/* edited */\n")
    second = find_launcher(package_dir=package, cache_dir=cache)
    assert second.source_id != first.source_id and second.path != first.path


async def test_denial_report_delegates_to_the_denial_monitor(sandbox: Sandbox, workspace: Path) -> None:
    # audit_denials="off" here, so the stderr heuristic decides (the audit path is the
    # corpus test's); an unsandboxed plan is never "denied".
    plan = sandbox.prepare(_policy(SandboxMode.WORKSPACE_WRITE), ["touch", "/etc/x"], str(workspace), dict(BASE_ENV))
    result = await _run(plan, workspace)
    report = await sandbox.denial_report(plan, 0, result.returncode, result.stdout, result.stderr)
    assert (report.denied, report.source) == (True, "heuristic")
    unsandboxed = LaunchPlan(["true"], {}, (), "none", policy=_policy(SandboxMode.NONE), cwd=str(workspace))
    report = await sandbox.denial_report(unsandboxed, 0, 0, b"", b"")
    assert (report.denied, report.source) == (False, "none")


async def test_audit_sees_real_denials_and_not_a_reopened_stderr(workspace: Path) -> None:
    # Kernel-side false positive guard: `> /dev/stderr` asks Landlock about creating in
    # /proc/PID/fd before finding the entry exists; the launcher allows that attempt.
    audited = Sandbox.create(SandboxSettings(audit_denials="auto"))
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(audited.run)
            if audited.capabilities()["denialSource"] != "audit":
                nursery.cancel_scope.cancel()
                pytest.skip("kernel audit records are not available here")
            reports = []
            for script in ('echo a > /dev/stderr; sh -c "echo b > /dev/stdout"', "touch /etc/exec-sandbox-x"):
                plan = audited.prepare(_policy(SandboxMode.READ_ONLY), ["sh", "-c", script], str(workspace), BASE_ENV)
                process = await trio.lowlevel.open_process(
                    plan.argv, cwd=str(workspace), env=plan.env, pass_fds=plan.pass_fds,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                await process.wait()
                reports.append(await audited.denial_report(plan, process.pid, process.returncode, b"", b""))
            nursery.cancel_scope.cancel()
    assert [(r.denied, r.source) for r in reports] == [(False, "audit"), (True, "audit")]
    # Refused by the read-only view (EROFS), named from the syscall record and stderr.
    assert [(d.blocker, d.target) for d in reports[1].denials] == [("fs.write_file", "/etc/")]


async def test_the_shared_namespace_is_released_when_run_ends(workspace: Path) -> None:
    own = Sandbox.create(SETTINGS)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(own.run)
            nursery.cancel_scope.cancel()
    assert own.capabilities()["networkNamespace"] == "per-process"
    result = await _sandboxed(own, workspace, _python(CONNECT.format(port=9)), mode=SandboxMode.READ_ONLY)
    assert result.stdout == b"PermissionError 13\n", result.stderr


def test_detect_reports_this_kernel() -> None:
    found = detect()
    assert isinstance(found, KernelSupport)
    assert found.root is IS_ROOT
    assert found.landlock_abi >= 3  # the module is skipped otherwise
