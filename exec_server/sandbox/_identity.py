"""Which uid a sandboxed command runs as when the server is root.

Decision: **drop to an unprivileged uid** (plus clear every capability set, the bounding
set, and lock the securebits — the launcher does both). Dropping only capabilities is not
enough: a process with uid 0 and no capabilities still *owns* every root-owned file, so
``chmod``/``chown``-free abuses like ``chmod 777 /etc/some-root-file`` succeed by plain
owner permission checks, root-owned sockets and files mode 0600 stay reachable, and
Landlock does not cover chmod, chown, hostname or connecting to pathname sockets.

The uid is the owner of the workspace (``cwd``) when that is not root — files the command
creates then belong to the workspace's owner, as if they had run it — else the operator's
fallback (``nobody``). The gid is that user's primary group (not the directory's group,
which could be a privileged one like ``disk``), again never 0; supplementary groups
(``docker``, ``wheel``…) are always dropped. Consequences to know:

- with ``workspaceWrite`` on a workspace the chosen uid cannot write (root-owned, or a
  writable root owned by someone else), the command simply gets EACCES;
- running as the workspace owner also means reaching what that user can reach outside the
  filesystem rules: Landlock (ABI ≤ 7) does not govern connecting to *pathname* unix
  sockets, so the owner's session D-Bus, ``systemd --user`` or ssh-agent sockets under
  ``/run/user/UID`` are reachable. An operator who runs such services for workspace owners
  sets ``run_as_workspace_owner=False``: every command then runs as the fallback uid.
"""

from __future__ import annotations

import os
import pwd

import attrs


@attrs.frozen
class Identity:
    """The uid/gid a sandboxed command runs as (no supplementary groups)."""

    uid: int
    gid: int


def choose_identity(cwd: str, *, root: bool, fallback: Identity, workspace_owner: bool = True) -> Identity | None:
    """Pick the unprivileged identity for a command started in ``cwd``.

    Args:
        cwd: the command's working directory (must exist).
        root: whether the server runs as root; otherwise nothing changes.
        fallback: the identity for a root-owned workspace.
        workspace_owner: run as the workspace's owner when it is not root; if False,
            always run as ``fallback``.

    Returns:
        None when the server is not root (the command keeps the server's uid), else the
        identity to drop to; never uid or gid 0.
    """
    if not root:
        return None
    if not workspace_owner:
        return fallback
    owner = os.stat(cwd)
    if owner.st_uid == 0:
        return fallback
    try:
        gid = pwd.getpwuid(owner.st_uid).pw_gid
    except KeyError:  # a uid without a passwd entry (a container's volume, say)
        gid = owner.st_gid
    return Identity(owner.st_uid, gid if gid != 0 else fallback.gid)
