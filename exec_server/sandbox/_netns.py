"""One empty network namespace that a root server's sandboxed commands join.

Creating a network namespace per command costs about 1 ms on the spawn path (and more in
the kernel's deferred teardown); joining an existing one with ``setns`` costs a few µs.
Sharing it is safe because it stays empty and inert:

- its only device, ``lo``, is down, and only root of the initial user namespace (the
  server) holds CAP_NET_ADMIN over it — sandboxed commands have no capabilities at all;
- Landlock refuses every TCP bind/connect (ABI 4) and the seccomp filter every other
  non-unix socket, so commands cannot talk to each other through it either;
- abstract unix sockets are per network namespace, so two sandboxed commands would
  share that namespace — Landlock's abstract-unix-socket scoping (ABI 6) keeps each
  command to its own domain's sockets. Below ABI 6 every command gets its own namespace.

A non-root server keeps creating a user + network namespace per command (joining a
namespace owned by another user namespace would need capabilities it does not have).
"""

from __future__ import annotations

import os
import subprocess
from typing import Final

from ._errors import SandboxUnavailable
from ._launcher import SELF_TEST_TIMEOUT_S, Launcher

# Landlock ABI with LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: needed before sharing.
SHARED_NETNS_MIN_ABI: Final = 6


def open_empty_netns(launcher: Launcher) -> int:
    """Create an empty network namespace and return an fd that keeps it alive (CLOEXEC).

    Raises:
        SandboxUnavailable: the namespace could not be created (caller falls back).
    """
    holder = subprocess.Popen(
        [launcher.path, "--hold-netns"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env={},
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        # The holder prints "ready" once unshared, or exits (EOF here) when it cannot.
        if holder.stdout.readline() != b"ready\n":
            raise SandboxUnavailable(f"cannot create a network namespace: {holder.communicate()[1].decode().strip()}")
        return os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=SELF_TEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        holder.stdout.close()
        if holder.stderr is not None:
            holder.stderr.close()
