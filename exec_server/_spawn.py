"""Starting a command: its environment, the checks that give spawn errors an errno, and the fork.

The fork is ``subprocess.Popen`` without ``preexec_fn`` so CPython keeps its vfork fast
path: the sandbox is applied by the launcher it execs, never by Python code in the child.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
from typing import Final

import attrs

from protocol import ErrorCode, ProtocolError

from ._pty import TerminalChannel

_F_SETPIPE_SZ: Final = 1031
# Bigger pipes mean fewer wake-ups per megabyte when a command streams output.
PIPE_BYTES: Final = 1024 * 1024
# Inherited variables a command never sees unless its request sets them (``is_withheld``).
SERVER_VAR_PREFIX: Final = "EXEC_SERVER_"
SECRET_NAME_WORDS: Final = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


@attrs.frozen
class SpawnedProcess:
    """A forked command and the server's ends of its pipes.

    With a terminal (``tty: true``) ``stdin_fd`` and ``stdout_fd`` are None, ``stderr_fd``
    carries only the launcher's own diagnostics (a setup failure) and ``terminal`` delivers
    the pty master once the command has its terminal (``_pty.py``).
    """

    popen: subprocess.Popen[bytes]
    stdin_fd: int | None
    stdout_fd: int | None
    stderr_fd: int
    terminal: TerminalChannel | None = None


def spawn_failed(err: OSError, what: str) -> ProtocolError:
    code = err.errno or errno.EIO
    return ProtocolError(
        ErrorCode.SPAWN_FAILED,
        f"spawn failed: {what}: {os.strerror(code)}",
        {"errno": errno.errorcode.get(code, str(code)), "strerror": os.strerror(code)},
    )


def is_withheld(name: str) -> bool:
    """Whether the server's variable ``name`` is kept from commands that inherit its environment.

    The server's own settings (``EXEC_SERVER_*``, the token among them) and anything named
    like a credential: a command may run untrusted code, and with network access a token
    would let it start a weaker-policy command through this very server.
    """
    upper = name.upper()
    return upper.startswith(SERVER_VAR_PREFIX) or any(word in upper for word in SECRET_NAME_WORDS)


def build_env(base: dict[str, str] | None, inherit: bool, marker: str, marker_var: str) -> dict[str, str]:
    """A command's environment: the server's (``inherit``) minus what ``is_withheld`` keeps
    back, then the request's ``env`` (which wins, withheld names included), then the marker."""
    env = {name: value for name, value in os.environ.items() if not is_withheld(name)} if inherit else {}
    if base:
        env.update(base)
    env[marker_var] = marker
    return env


def check_spawnable(argv0: str, cwd: str, env: dict[str, str]) -> None:
    """Fail the way ``execvp`` and ``chdir`` would, before the sandbox launcher hides it.

    Raises:
        ProtocolError: -32007 with ``errno``/``strerror`` for a bad cwd or program.
    """
    if not os.path.isdir(cwd):
        code = errno.ENOTDIR if os.path.exists(cwd) else errno.ENOENT
        raise spawn_failed(OSError(code, os.strerror(code)), f"cwd {cwd!r}")
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise spawn_failed(OSError(errno.ENOENT, ""), argv0)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise spawn_failed(OSError(errno.EACCES, ""), argv0)
        return
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise spawn_failed(OSError(errno.ENOENT, ""), argv0)


def spawn(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    pipe_stdin: bool,
    pass_fds: tuple[int, ...] = (),
    terminal: TerminalChannel | None = None,
) -> SpawnedProcess:
    """Fork and exec ``argv`` in a new process group with piped output.

    With ``terminal`` (the plan's argv is the launcher's with ``--pty-fd``) the launcher
    starts in a session of its own and the command gets its stdio from the pty: the server
    keeps only a pipe for the launcher's diagnostics.

    Raises:
        ProtocolError: -32007 when the kernel refuses the spawn.
    """
    if terminal is not None:
        return _spawn_with_terminal(argv, cwd=cwd, env=env, pass_fds=pass_fds, terminal=terminal)
    # Our own pipes (not Popen's file objects): the process core reads the raw fds with
    # os.read and trio's wait_readable.
    stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
    stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC) if pipe_stdin else (subprocess.DEVNULL, None)
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin_r,
            stdout=stdout_w,
            stderr=stderr_w,
            pass_fds=pass_fds,
            process_group=0,
            close_fds=True,
        )
    except OSError as err:
        for fd in (stdout_r, stderr_r, stdin_w):
            if fd is not None:
                os.close(fd)
        raise spawn_failed(err, argv[0]) from None
    finally:
        for fd in (stdout_w, stderr_w, stdin_r if pipe_stdin else None):
            if fd is not None:
                os.close(fd)
    for fd in (stdout_r, stderr_r, stdin_w):
        if fd is None:
            continue
        os.set_blocking(fd, False)
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size for unprivileged users: keep the default
    return SpawnedProcess(popen, stdin_w, stdout_r, stderr_r)


def _spawn_with_terminal(
    argv: list[str], *, cwd: str, env: dict[str, str], pass_fds: tuple[int, ...], terminal: TerminalChannel
) -> SpawnedProcess:
    # A new session rather than a new group: under --limits-only the launcher is the
    # command and must be a session leader to take the terminal (setsid would fail for a
    # group leader). Its pid is still its process group's id, as the tree code expects.
    stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_w,
            pass_fds=pass_fds,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as err:
        os.close(stderr_r)
        raise spawn_failed(err, argv[0]) from None
    finally:
        os.close(stderr_w)
        terminal.launched()
    os.set_blocking(stderr_r, False)
    return SpawnedProcess(popen, None, None, stderr_r, terminal)
