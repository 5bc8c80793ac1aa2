"""What the running kernel (and this process's privileges) can enforce: the detection seam.

:func:`detect` reads the facts once; :class:`~exec_server.sandbox.Sandbox` decides from the
:class:`KernelSupport` it returns which policies it can promise, so a test can hand it
another ``KernelSupport`` (say ``landlock_abi=0``) and see requests refused with -32006.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final

import attrs

_NR_LANDLOCK_CREATE_RULESET: Final = 444  # the same number on every architecture
_LANDLOCK_CREATE_RULESET_VERSION: Final = 1
_CAP_SETPCAP: Final = 8
_CAP_SYS_ADMIN: Final = 21
# The launcher's seccomp filter checks the x86_64 syscall table only.
_SECCOMP_ARCHES: Final = frozenset({"x86_64"})


@attrs.frozen(kw_only=True)
class KernelSupport:
    """Sandbox building blocks available to this server process.

    Attributes:
        landlock_abi: the kernel's Landlock ABI version, 0 when Landlock is off or absent.
        seccomp_filter: seccomp filters with errno/kill actions on an architecture the
            launcher's filter knows.
        network_namespace: an empty network namespace can be created (directly as root,
            otherwise inside a user namespace).
        root: the server runs with effective uid 0 (commands keep uid 0, with no capability).
        namespaces: the launcher can build a command's namespaces and view: as root,
            CAP_SYS_ADMIN (mounts, namespaces) and CAP_SETPCAP (emptying the bounding set)
            are effective; otherwise unprivileged user namespaces are allowed.
    """

    landlock_abi: int
    seccomp_filter: bool
    network_namespace: bool
    root: bool
    namespaces: bool


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_NR_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    # -1 with ENOSYS: not built in; with EOPNOTSUPP: built in but disabled at boot.
    return max(int(version), 0)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _effective_caps() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _user_namespaces_allowed() -> bool:
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    if max_ns is not None and int(max_ns) == 0:
        return False
    # Debian's and Ubuntu's switches for unprivileged user namespaces.
    if (_read("/proc/sys/kernel/unprivileged_userns_clone") or "1").strip() == "0":
        return False
    return (_read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") or "0").strip() == "0"


def detect() -> KernelSupport:
    """Read the running kernel's sandbox support (cheap: one syscall and a few /proc files).

    The static checks here can be optimistic (a container may refuse ``unshare`` anyway);
    :meth:`Sandbox.create` confirms them by running the launcher's self-test once.
    """
    caps = _effective_caps()
    root = os.geteuid() == 0
    actions = (_read("/proc/sys/kernel/seccomp/actions_avail") or "").split()
    seccomp = platform.machine() in _SECCOMP_ARCHES and {"errno", "kill_process"} <= set(actions)
    has_netns = os.path.exists("/proc/self/ns/net")
    if root:
        network_namespace = has_netns and bool(caps >> _CAP_SYS_ADMIN & 1)
    else:
        network_namespace = has_netns and os.path.exists("/proc/self/ns/user") and _user_namespaces_allowed()
    needed = (1 << _CAP_SYS_ADMIN) | (1 << _CAP_SETPCAP)
    userns = os.path.exists("/proc/self/ns/user") and _user_namespaces_allowed()
    return KernelSupport(
        landlock_abi=landlock_abi(),
        seccomp_filter=seccomp,
        network_namespace=network_namespace,
        root=root,
        namespaces=caps & needed == needed if root else userns,
    )
