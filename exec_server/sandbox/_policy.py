"""Whether a policy can be enforced here, and the writable paths it grants."""

from __future__ import annotations

import os
from typing import Final

from protocol import SandboxMode, SandboxPolicy

from ._errors import SandboxUnavailable
from ._kernel import KernelSupport

# ABI 3 adds LANDLOCK_ACCESS_FS_TRUNCATE: below it truncate(2) of any file outside the
# workspace is not handled, so "nothing writable" could not be promised.
MIN_LANDLOCK_ABI: Final = 3
# From ABI 4 Landlock also refuses TCP bind/connect (defence in depth and audit records
# that name the destination); below it the seccomp filter alone refuses TCP sockets.
LANDLOCK_NET_ABI: Final = 4
# Landlock audit logging of denials after execve (LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON).
LANDLOCK_LOG_ABI: Final = 7
# launcher.c accepts at most 256 paths of each kind (--rw, --ro, --mask); the workspace and
# temp dir take two --rw.
MAX_WRITABLE_ROOTS: Final = 60
MAX_LAUNCHER_PATHS: Final = 256


def check_enforceable(policy: SandboxPolicy, kernel: KernelSupport) -> None:
    """Refuse a sandboxed policy that this kernel cannot fully enforce.

    Raises:
        SandboxUnavailable: naming the missing piece.
    """
    if policy.mode is SandboxMode.NONE:
        return
    if kernel.landlock_abi == 0:
        raise SandboxUnavailable("Landlock is not available in this kernel")
    if kernel.landlock_abi < MIN_LANDLOCK_ABI:
        raise SandboxUnavailable(
            f"Landlock ABI {kernel.landlock_abi} is too old (need {MIN_LANDLOCK_ABI} to refuse truncation)"
        )
    if not kernel.namespaces:
        if kernel.root:
            raise SandboxUnavailable("running as root without CAP_SYS_ADMIN/CAP_SETPCAP: cannot build the view")
        raise SandboxUnavailable("user namespaces are not allowed here: cannot build the view")
    if not policy.network:
        if not kernel.network_namespace:
            raise SandboxUnavailable("network isolation unavailable: cannot create a network namespace")
        if not kernel.seccomp_filter:
            raise SandboxUnavailable("network isolation unavailable: no seccomp filter for this architecture")


def writable_paths(policy: SandboxPolicy, cwd: str) -> tuple[str, ...]:
    """The workspace and writable roots a policy grants, resolved (symlinks followed).

    ``readOnly`` grants nothing, whatever ``writableRoots`` says.

    Raises:
        SandboxUnavailable: a root is relative, missing, or there are too many.
    """
    if policy.mode is not SandboxMode.WORKSPACE_WRITE:
        return ()
    if len(policy.writable_roots) > MAX_WRITABLE_ROOTS:
        raise SandboxUnavailable(f"too many writableRoots (at most {MAX_WRITABLE_ROOTS})")
    paths: list[str] = []
    for root in (cwd, *policy.writable_roots):
        if not os.path.isabs(root):
            raise SandboxUnavailable(f"writable root is not absolute: {root!r}")
        # Landlock pins the inode a path names at launch: resolve now so the grant and
        # the error message talk about the same directory.
        real = os.path.realpath(root)
        if not os.path.exists(real):
            raise SandboxUnavailable(f"writable root does not exist: {root!r}")
        if real not in paths:
            paths.append(real)
    return tuple(paths)
