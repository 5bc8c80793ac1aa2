"""A launch plan: the exact argv/env the server spawns, and how to clean up after it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from protocol import SandboxMode, SandboxPolicy

from ._identity import Identity
from ._limits import NO_LIMITS, CommandLimits


def _nothing_to_clean() -> None:
    pass


NO_CLEANUP: Final[Callable[[], None]] = _nothing_to_clean


@attrs.frozen
class LaunchPlan:
    """What the server spawns for one command.

    Attributes:
        argv: launcher + policy arguments + ``--`` + the command (or the command alone
            when unsandboxed).
        env: the final environment (``TMPDIR``/``TMP``/``TEMP`` point at the private
            temp dir under ``workspaceWrite``).
        pass_fds: file descriptors the spawn must keep open (none today).
        sandbox_type: ``"landlock"`` or ``"none"``, reported as ``sandboxType``.
        cleanup: removes the private temp dir; idempotent; call once the process closed.
        policy: the resolved policy (None for a plan made outside a request).
        cwd: the command's working directory.
        writable_roots: every directory the command may write (workspace, roots, temp).
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
    limits: CommandLimits = NO_LIMITS


def launcher_args(
    *,
    landlock_abi: int,
    mode: SandboxMode,
    writable: Sequence[str],
    network: bool,
    netns_fd: int | None,
    identity: Identity | None,
    log_new_exec: bool,
) -> list[str]:
    """The launcher's policy arguments (everything between the binary and ``--``).

    See the usage comment at the top of ``launcher.c``.
    """
    args = ["--abi", str(landlock_abi), "--mode", mode.value]
    for path in writable:
        args += ["--rw", path]
    args += ["--net", "1" if network else "0"]
    if netns_fd is not None and not network:
        args += ["--netns-fd", str(netns_fd)]
    if identity is not None:
        args += ["--uid", str(identity.uid), "--gid", str(identity.gid)]
    if log_new_exec:
        args.append("--log-new-exec")
    return args
