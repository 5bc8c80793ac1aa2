"""A launch plan: the exact argv/env the server spawns, and how to clean up after it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from protocol import SandboxMode, SandboxPolicy

from ._limits import NO_LIMITS, CommandLimits


def _nothing_to_clean() -> None:
    pass


NO_CLEANUP: Final[Callable[[], None]] = _nothing_to_clean


@attrs.frozen
class LaunchPlan:
    """What the server spawns for one command.

    Attributes:
        argv: launcher + policy arguments + ``--`` + the command (or the command alone
            when it runs without the launcher).
        env: the environment the server spawns with (the command's own, unlaunched). Through the launcher that is the
            launcher's own small environment (the tree marker): the command's environment
            travels in the memfd named by ``--env-fd`` and is installed only at the final
            ``execve``, so nothing of a request (``LD_PRELOAD``…) reaches the launcher.
        pass_fds: file descriptors the spawn must keep open (the env memfd, the shared
            network namespace).
        sandbox_type: ``"landlock"`` or ``"none"``, reported as ``sandboxType``.
        cleanup: closes the env memfd and removes the private temp dir; idempotent; call
            once the process closed (or failed to start).
        policy: the resolved policy (None for a plan made outside a request).
        cwd: the command's working directory.
        writable_roots: every directory the command may write (workspace, roots, temp).
        read_only_subpaths: the carve-outs bound read-only inside the writable roots.
        command_env: the environment the command itself gets (``TMPDIR``/``TMP``/``TEMP``
            point at the private temp dir under ``workspaceWrite``).
        limits: its resource limits (``verdict`` after the reap; ``cleanup`` closes them).
    """

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...]
    sandbox_type: str
    cleanup: Callable[[], None] = NO_CLEANUP
    policy: SandboxPolicy | None = None
    cwd: str | None = None
    writable_roots: tuple[str, ...] = ()
    read_only_subpaths: tuple[str, ...] = ()
    command_env: dict[str, str] = attrs.Factory(dict)
    limits: CommandLimits = NO_LIMITS


@attrs.frozen
class TerminalRequest:
    """A command that gets a pseudo-terminal (``tty: true``): the launcher allocates it where
    the command runs and sends the master back over ``fd`` (one end of a unix socketpair)."""

    fd: int
    rows: int
    cols: int

    def launcher_args(self) -> list[str]:
        """The launcher's first flags (``launcher.c``: before the limit flags)."""
        return ["--pty-fd", str(self.fd), "--pty-size", f"{self.rows}:{self.cols}"]


@attrs.frozen
class Masks:
    """What the view hides: the paths, and the mode-000 placeholders bound over them."""

    paths: tuple[str, ...]
    file: str
    directory: str


def launcher_args(
    *,
    landlock_abi: int,
    mode: SandboxMode,
    writable: Sequence[str],
    read_only: Sequence[str] = (),
    masks: Masks | None = None,
    network: bool,
    netns_fd: int | None,
    env_fd: int | None = None,
    log_new_exec: bool,
) -> list[str]:
    """The launcher's policy arguments (everything between the binary and ``--``).

    See the usage comment at the top of ``launcher.c``. Mode ``none`` gets only the PID
    namespace (and the env fd): every other argument is ignored.
    """
    args = ["--mode", mode.value]
    if env_fd is not None:
        args += ["--env-fd", str(env_fd)]
    if mode is SandboxMode.NONE:
        return args
    args += ["--abi", str(landlock_abi)]
    for path in writable:
        args += ["--rw", path]
    for path in read_only:
        args += ["--ro", path]
    if masks is not None and masks.paths:
        for path in masks.paths:
            args += ["--mask", path]
        args += ["--mask-file", masks.file, "--mask-dir", masks.directory]
    args += ["--net", "1" if network else "0"]
    if netns_fd is not None and not network:
        args += ["--netns-fd", str(netns_fd)]
    if log_new_exec:
        args.append("--log-new-exec")
    return args
