"""``exec-client run -t`` and ``exec-client shell`` end to end: the real CLI in a real terminal.

Each terminal test starts a private tmux server (its own ``-L`` socket, killed afterwards) whose one
pane runs a small sh script: it records ``stty -a``, runs the CLI against a real server,
then records the CLI's exit status and ``stty -a`` again. The test types with
``send-keys`` and reads the screen with ``capture-pane``, polling it against a deadline.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import psutil
import pytest
import trio

from rawclient import cli_env, no_leftover_processes, run_cli_server  # noqa: F401  (a fixture)
from test_delivery_support import StallProxy

TMUX: Final = shutil.which("tmux")

SCREEN_DEADLINE: Final = 20.0
TEST_DEADLINE: Final = 60
BASH: Final = ["bash", "--norc", "--noprofile", "-i"]
PROMPT: Final = r"^pty-test[$#] ?$"  # the remote bash's (PS1 set by the test; capture-pane trims the space)
_names = itertools.count()


def _outside_tmux(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the variables by which tmux refuses to nest (pytest may run in tmux)."""
    return {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}


class Tmux:
    """One private tmux server with one 80x24 session, ``main``."""

    def __init__(self, workdir: Path) -> None:
        assert TMUX is not None
        self.workdir = workdir
        self._base = [TMUX, "-L", f"exec-pty-{os.getpid()}-{next(_names)}-{secrets.token_hex(3)}", "-f", os.devnull]
        self._env = _outside_tmux(dict(os.environ))

    async def tmux(self, *args: str, check: bool = True) -> str:
        done = await trio.run_process(
            [*self._base, *args], capture_stdout=True, capture_stderr=True, check=False, env=self._env
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    async def start(self, script: str, env: dict[str, str]) -> None:
        """Run ``script`` (sh) as the pane's program, in an 80x24 window."""
        self._env = _outside_tmux(env)
        path = self.workdir / "pane.sh"
        path.write_text(script)
        await self.tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "main", f"sh {shlex.quote(str(path))}")

    async def kill(self) -> None:
        await self.tmux("kill-server", check=False)

    async def type(self, text: str, *, enter: bool = True) -> None:
        await self.tmux("send-keys", "-t", "main", "-l", text)
        if enter:
            await self.tmux("send-keys", "-t", "main", "Enter")

    async def key(self, name: str) -> None:
        await self.tmux("send-keys", "-t", "main", name)

    async def screen(self) -> str:
        return await self.tmux("capture-pane", "-p", "-t", "main", check=False)

    async def wait_screen(self, pattern: str, *, deadline: float = SCREEN_DEADLINE, after: int = 0) -> re.Match[str]:
        """Poll the screen until ``pattern`` (a multi-line regex) matches from line ``after`` on."""
        regex = re.compile(pattern, re.MULTILINE)
        screen = ""
        with trio.move_on_after(deadline):
            while True:
                screen = "\n".join((await self.screen()).split("\n")[after:])
                found = regex.search(screen)
                if found:
                    return found
                await trio.sleep(0.05)
        raise AssertionError(f"{pattern!r} not on the screen within {deadline}s:\n{screen}")

    async def lines(self) -> int:
        """How many lines of the screen hold something (the next output starts below)."""
        return len((await self.screen()).rstrip("\n").split("\n"))

    async def pane_pid(self) -> int:
        return int((await self.tmux("display-message", "-p", "-t", "main", "#{pane_pid}")).strip())


class Pane:
    """What the pane script leaves behind: the CLI's exit status and ``stty -a`` around it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def script(self, cli_args: list[str], *, stderr_to_file: bool = False) -> str:
        cli = shlex.join([sys.executable, "-m", "exec_client", *cli_args])
        d = shlex.quote(str(self.workdir))
        if stderr_to_file:  # what the CLI says where the test can read it after the pane is gone
            cli += f" 2> {d}/stderr"
        return (
            f"stty -a > {d}/before\n"
            f"{cli}\n"
            f"rc=$?\n"
            f"stty -a > {d}/after\n"
            f"echo $rc > {d}/rc.tmp && mv {d}/rc.tmp {d}/rc\n"
            # Keep the pane (and its last screen) until the test kills the tmux server.
            "exec sleep 600\n"
        )

    async def exit_status(self, deadline: float = SCREEN_DEADLINE) -> int:
        rc = self.workdir / "rc"
        with trio.move_on_after(deadline):
            while not rc.exists():
                await trio.sleep(0.05)
            return int(rc.read_text())
        raise AssertionError(f"the CLI did not exit within {deadline}s")

    def terminal_unchanged(self, *, resized: bool = False) -> None:
        before = (self.workdir / "before").read_text()
        after = (self.workdir / "after").read_text()
        if resized:  # the window size is the one thing the test itself changed
            before, after = (re.sub(r"rows \d+; columns \d+;", "", text) for text in (before, after))
        assert "-icanon" not in before and "icanon" in before  # the pane starts cooked
        assert after == before


def pane_env(tmp_path: Path, url: str, token: str) -> dict[str, str]:
    env = cli_env(EXEC_SERVER_URL=url, EXEC_SERVER_TOKEN=token, HOME=str(tmp_path))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class Session:
    """One test's terminal: its tmux, its pane's results, and the marker of its remote commands."""

    def __init__(self, tmux: Tmux, pane: Pane, marker: str) -> None:
        self.tmux = tmux
        self.pane = pane
        self.marker = marker

    async def run(self, cli_args: list[str], env: dict[str, str], *, stderr_to_file: bool = False) -> None:
        """The CLI with ``cli_args`` in the pane; the remote commands get the marker."""
        subcommand, *rest = cli_args
        marked = [subcommand, "--env", f"EXEC_PTY_TEST={self.marker}", *rest]
        await self.tmux.start(self.pane.script(marked, stderr_to_file=stderr_to_file), env)

    async def wait_remote(self, argv: list[str], deadline: float = SCREEN_DEADLINE) -> psutil.Process:
        """The running remote process ``argv`` of this test (found by its environment marker)."""
        with trio.move_on_after(deadline):
            while True:
                for process in psutil.process_iter(["cmdline"]):
                    try:
                        if process.info["cmdline"] == argv and process.environ().get("EXEC_PTY_TEST") == self.marker:
                            return process
                    except psutil.Error:
                        pass
                await trio.sleep(0.05)
        raise AssertionError(f"{argv} never ran")

    async def wait_remote_size(self, process: psutil.Process, size: tuple[int, int]) -> None:
        """Until the remote terminal of ``process`` (its stdin) has ``size``: the resize
        travels on its own, so a command typed right after it could otherwise overtake it."""
        with trio.move_on_after(SCREEN_DEADLINE):
            while _terminal_size(process.pid) != size:
                await trio.sleep(0.05)
            return
        raise AssertionError(f"the remote terminal never got the size {size}: {_terminal_size(process.pid)}")

    async def cli_process(self) -> psutil.Process:
        shell = psutil.Process(await self.tmux.pane_pid())
        for child in shell.children():
            if "exec_client" in child.cmdline():
                return child
        raise AssertionError("the CLI is not running in the pane")


def _terminal_size(pid: int) -> tuple[int, int]:
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    finally:
        os.close(fd)
    return rows, cols


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    if TMUX is None:
        pytest.skip("tmux is not installed (apt-get install tmux): no terminal to drive the CLI in")
    tmux = Tmux(tmp_path)
    try:
        yield Session(tmux, Pane(tmp_path), secrets.token_hex(8))
    finally:
        with trio.CancelScope(shield=True):
            await tmux.kill()


async def _bash(session: Session, server: Any, tmp_path: Path, *extra: str) -> None:
    """``exec-client run -t -- bash --norc -i`` in the pane, at its first prompt."""
    env = pane_env(tmp_path, server.url, server.token)
    await session.run(["run", "-t", "--env", r"PS1=pty-test\$ ", *extra, "--", *BASH], env)
    await session.tmux.wait_screen(PROMPT)


async def _answer(session: Session, command: str, pattern: str) -> re.Match[str]:
    """Type ``command`` at the remote prompt; its answer is ``pattern`` on a line below it."""
    start = await session.tmux.lines() - 1
    await session.tmux.type(command)
    return await session.tmux.wait_screen(re.escape(command) + r"\s*\n(?:.*\n)*?" + pattern, after=start)


async def test_bash_answers_and_exit_3_restores_the_terminal(
    session: Session, server: Any, tmp_path: Path, no_leftover_processes: None
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        await _bash(session, server, tmp_path)
        await _answer(session, "echo $((6*7))", r"^42\s*$")
        found = await _answer(session, "tty", r"^(/dev/pts/\d+)\s*$")
        assert found.group(1).startswith("/dev/pts/")
        await _answer(session, "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys", r"^all-ttys\s*$")
        await _answer(session, "echo $TERM", r"^(screen|tmux)\S*\s*$")  # ours, as ssh sends it
        await session.tmux.type("exit 3")
        assert await session.pane.exit_status() == 3
        session.pane.terminal_unchanged()


async def test_window_size_at_start_and_on_resize(
    session: Session, server: Any, tmp_path: Path, no_leftover_processes: None
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        await _bash(session, server, tmp_path)
        bash = await session.wait_remote(BASH)
        await _answer(session, "stty size", r"^24 80\s*$")
        for rows, cols in ((30, 100), (20, 60)):
            await session.tmux.tmux("resize-window", "-t", "main", "-x", str(cols), "-y", str(rows))
            await session.wait_remote_size(bash, (rows, cols))
            await _answer(session, "stty size", rf"^{rows} {cols}\s*$")
        await session.tmux.type("exit")
        assert await session.pane.exit_status() == 0
        session.pane.terminal_unchanged(resized=True)


async def test_ctrl_c_ctrl_z_and_ctrl_backslash_reach_the_remote_program(
    session: Session, server: Any, tmp_path: Path, no_leftover_processes: None
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        await _bash(session, server, tmp_path)
        await session.tmux.type("sleep 30")
        await session.wait_remote(["sleep", "30"])
        await session.tmux.key("C-c")
        # Back at the prompt at once (well before the 30 s), the sleep killed by SIGINT.
        await _answer(session, "echo rc=$?", r"^rc=130\s*$")

        await session.tmux.type("sleep 31")
        sleeper = await session.wait_remote(["sleep", "31"])
        await session.tmux.key("C-z")
        await session.tmux.wait_screen(r"Stopped\s+sleep 31")
        assert sleeper.status() == psutil.STATUS_STOPPED
        await session.tmux.type("kill %1")
        await session.tmux.type("sleep 32")
        await session.wait_remote(["sleep", "32"])
        await session.tmux.key("C-\\")
        await _answer(session, "echo rc=$?", r"^rc=131\s*$")  # SIGQUIT
        await session.tmux.type("exit 0")
        assert await session.pane.exit_status() == 0
        session.pane.terminal_unchanged()


async def test_python_repl(session: Session, server: Any, tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, server.url, server.token)
        await session.run(["run", "-t", "--", sys.executable, "-i", "-q"], env)
        await session.tmux.wait_screen(r"^>>> ?$")
        await _answer(session, "6*7", r"^42\s*$")
        await _answer(session, "import sys; sys.stdin.isatty()", r"^True\s*$")
        await session.tmux.key("C-d")  # the terminal's EOF ends the REPL
        assert await session.pane.exit_status() == 0
        session.pane.terminal_unchanged()


@pytest.mark.parametrize(
    ("program", "quit_keys"), [(["less"], ["q"]), (["vi", "-u", "NONE", "-n"], ["Escape", ":q", "Enter"])]
)
async def test_full_screen_program(
    session: Session, server: Any, tmp_path: Path, no_leftover_processes: None, program: list[str], quit_keys: list[str]
) -> None:
    if shutil.which(program[0]) is None:
        pytest.skip(f"{program[0]} is not installed")
    text = tmp_path / "story.txt"
    text.write_text("".join(f"line {n} of the story\n" for n in range(1, 101)))
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, server.url, server.token)
        # A short name: vi's file message must fit one line, or it waits for Enter.
        await session.run(["run", "-t", "--cwd", str(tmp_path), "--", *program, text.name], env)
        await session.tmux.wait_screen(r"^line 1 of the story\s*\n(?:.*\n){20}line 22 of the story")
        screen = await session.tmux.screen()
        assert "line 30 of the story" not in screen  # one screenful: it knows the size
        for key in quit_keys:
            if key.startswith(":"):
                await session.tmux.type(key, enter=False)
            else:
                await session.tmux.key(key)
        assert await session.pane.exit_status() == 0
        session.pane.terminal_unchanged()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
async def test_a_signal_to_the_cli_ends_the_command_and_restores_the_terminal(
    session: Session, server: Any, tmp_path: Path, no_leftover_processes: None, signum: signal.Signals
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, server.url, server.token)
        await session.run(["run", "-t", "--", "sleep", "100"], env)
        sleeper = await session.wait_remote(["sleep", "100"])
        (await session.cli_process()).send_signal(signum)
        # The remote command got it (SIGHUP: our terminal hung up; SIGTERM: terminated;
        # SIGINT, which raw mode never makes of a key: an interrupt of its foreground job).
        assert await session.pane.exit_status() == 128 + signum
        assert not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE
        session.pane.terminal_unchanged()


async def test_a_closed_terminal_ends_the_cli_and_the_remote_command(
    session: Session, server: Any, tmp_path: Path, no_leftover_processes: None
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, server.url, server.token)
        ticker = ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]
        await session.run(["run", "-t", "--", *ticker], env, stderr_to_file=True)
        remote = await session.wait_remote(ticker)
        await session.tmux.wait_screen(r"^tick")
        cli = await session.cli_process()
        await session.tmux.kill()  # the window closes: SIGHUP, and writes to it fail (EIO)
        with trio.move_on_after(SCREEN_DEADLINE):
            while _alive(cli) or _alive(remote):
                await trio.sleep(0.05)
        assert not _alive(cli), "the CLI outlived its terminal"
        assert not _alive(remote), "the remote command outlived the CLI's terminal"
    # It left quietly: the hangup was forwarded, and a write to the dead terminal (EIO) is
    # the end of our screen, not a crash.
    said = (tmp_path / "stderr").read_text()
    assert "Traceback" not in said and "Error" not in said, said


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_dash_t_needs_a_terminal_and_dash_tt_forces_one(server: Any, tmp_path: Path) -> None:
    env = pane_env(tmp_path, server.url, server.token)
    with trio.fail_after(TEST_DEADLINE):
        refused = await trio.run_process(
            [sys.executable, "-m", "exec_client", "run", "-t", "--", "tty"],
            env=env, stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )
        assert refused.returncode == 2
        assert refused.stderr.decode().count("\n") == 1 and "-t needs a terminal on stdin" in refused.stderr.decode()
        forced = await trio.run_process(
            [sys.executable, "-m", "exec_client", "run", "-tt", "--", "sh", "-c", "tty; exit 5"],
            env=env, stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )
    assert forced.returncode == 5, forced.stderr
    assert re.fullmatch(rb"/dev/pts/\d+\r\n", forced.stdout), forced.stdout
    assert forced.stderr == b""


async def test_a_cut_connection_is_resumed_under_the_terminal(
    session: Session, server: Any, tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    proxy = await nursery.start(StallProxy(int(server.url.rsplit(":", 1)[1])).serve)
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, f"ws://127.0.0.1:{proxy.port}", server.token)
        await session.run(["run", "-t", "--env", r"PS1=pty-test\$ ", "--", *BASH], env)
        await session.tmux.wait_screen(PROMPT)
        await _answer(session, "echo $((6*7))", r"^42\s*$")
        proxy.cut()
        # The notice is a line of its own even in raw mode ("\r\n"), and the shell goes on.
        await session.tmux.wait_screen(r"^exec-client: session \S+ resumed on a new")  # (it may wrap)
        await _answer(session, "echo again-$((6*7))", r"^again-42\s*$")
        await session.tmux.type("exit 9")
        assert await session.pane.exit_status() == 9
        session.pane.terminal_unchanged()
    assert proxy.accepted == 2


# --- against a server started the way a user starts one --------------------------------------


@pytest.fixture
async def user_server(tmp_path: Path) -> AsyncIterator[tuple[str, str, Any]]:
    """``exec-server serve --listen ws://127.0.0.1:0 --token-file F``: the default policy (a sandbox)."""
    token_file = tmp_path / "server-token"
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(token_file)]
    async with run_cli_server(args, cli_env()) as cli:
        with trio.fail_after(30):
            url = (await cli.stdout_line()).decode()
        assert url.startswith("ws://127.0.0.1:"), cli.stderr
        yield url, token_file.read_text().strip(), cli


async def test_run_t_and_shell_on_a_sandboxed_server_started_by_hand(
    session: Session, user_server: tuple[str, str, Any], tmp_path: Path
) -> None:
    url, token, cli = user_server
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, url, token)
        await session.run(["shell", "--token-file", str(tmp_path / "server-token")], env)
        await session.tmux.wait_screen(r"[$#] ?$")
        await _answer(session, "echo $((6*7))", r"^42\s*$")
        await _answer(session, "tty", r"^/dev/pts/\d+\s*$")
        await _answer(session, "pwd", "^" + re.escape(pwd.getpwuid(os.getuid()).pw_dir) + r"\s*$")  # login: home
        await _answer(session, "touch /etc/exec-pty-x; echo rc=$?", r"^rc=1\s*$")  # the default sandbox
        await session.tmux.type("exit 4")
        assert await session.pane.exit_status() == 4
        session.pane.terminal_unchanged()
        assert not Path("/etc/exec-pty-x").exists()
        await session.tmux.wait_screen(r"exec-client: sandbox denied")



async def test_a_lost_server_ends_the_cli_with_the_terminal_restored(
    session: Session, user_server: tuple[str, str, Any], tmp_path: Path
) -> None:
    url, token, cli = user_server
    with trio.fail_after(TEST_DEADLINE):
        env = pane_env(tmp_path, url, token)
        await session.run(["run", "-t", "--no-resume", "--env", r"PS1=pty-test\$ ", "--", *BASH], env)
        await session.tmux.wait_screen(PROMPT)
        bash = await session.wait_remote(BASH)
        await _answer(session, "echo $((6*7))", r"^42\s*$")
        cli.process.kill()  # the connection drops without a close frame
        assert await session.pane.exit_status() == 255
        session.pane.terminal_unchanged()
        await session.tmux.wait_screen(r"^exec-client: failure: connection lost")
        with trio.move_on_after(SCREEN_DEADLINE):
            while bash.is_running() and bash.status() != psutil.STATUS_ZOMBIE:
                await trio.sleep(0.05)
        assert not bash.is_running() or bash.status() == psutil.STATUS_ZOMBIE, "the remote shell outlived its server"


async def test_shell_without_a_terminal_reads_commands_from_stdin(
    user_server: tuple[str, str, Any], tmp_path: Path
) -> None:
    url, token, _cli = user_server
    with trio.fail_after(TEST_DEADLINE):
        done = await trio.run_process(
            [sys.executable, "-m", "exec_client", "shell"],
            env=pane_env(tmp_path, url, token),
            stdin=b"echo $((6*7)); [ -t 0 ] || echo no-tty; exit 6\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    # (stderr may hold what the login profile says about the read-only sandbox)
    assert (done.returncode, done.stdout) == (6, b"42\nno-tty\n"), done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the server as the test user")
async def test_shell_is_the_login_shell_of_the_servers_user(session: Session, tmp_path: Path) -> None:
    from test_sandbox_view import TEST_USER, _user_exists, serve_as_the_test_user

    if not _user_exists(TEST_USER) or not os.path.exists("/usr/bin/python3"):
        pytest.skip(f"needs a user {TEST_USER!r} (useradd -m {TEST_USER}) and /usr/bin/python3")
    entry = pwd.getpwnam(TEST_USER)
    with trio.fail_after(120):
        async with serve_as_the_test_user(Path(entry.pw_dir), "--allow-unsandboxed") as (url, token, _):
            await session.run(["shell", "--sandbox", "readOnly"], pane_env(tmp_path, url, token))
            await session.tmux.wait_screen(r"[$#] ?$")
            # Its passwd shell as a login shell, as that user, in that user's home, on a terminal.
            await _answer(session, 'echo "$0:$(id -un):$PWD"; tty', rf"^{re.escape(entry.pw_shell)}:{TEST_USER}:{re.escape(entry.pw_dir)}\s*\n/dev/pts/\d+\s*$")
            await session.tmux.type("exit 7")
            assert await session.pane.exit_status() == 7
            session.pane.terminal_unchanged()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.parametrize(("shell_env", "expected"), [({"SHELL": "/bin/bash"}, "/bin/bash"), ({}, "/bin/sh")])
def test_the_login_shell_of_a_user_without_a_passwd_entry(shell_env: dict[str, str], expected: str) -> None:
    """Without a passwd entry (getent finds nothing) ``shell`` falls back to $SHELL, then /bin/sh."""
    import subprocess

    from exec_client._cli import _login_shell_command

    assert pwd.getpwall() and all(entry.pw_uid != 4242 for entry in pwd.getpwall())
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", **shell_env}
    done = subprocess.run(
        ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", *_login_shell_command(None)],
        input=b'echo "$0 $(id -u) $PWD"\n', capture_output=True, env=env, cwd="/", timeout=30, check=False,
    )
    assert (done.returncode, done.stdout.decode()) == (0, f"{expected} 4242 /tmp\n"), done.stderr
