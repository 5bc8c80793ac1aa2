"""Codex's permissions profile as our ``SandboxPolicy``: exact, or refused — never wider.

Our sandbox reads everywhere and writes only where a policy says (docs/protocol.md §
sandbox). So a profile maps when it reads the whole file system, writes a set of roots
that contains the command's cwd (our ``workspaceWrite`` always makes cwd writable). A
read-only carve-out inside a writable root (Codex's ``.git``, ``.codex``, ``.agents``,
``.aws``) becomes one of our ``readOnlySubpaths``, relative to the root that holds it: ours
apply below every writable root, which is as narrow or narrower, never wider. A carve-out
that does not exist and that Codex marks ``missing_path_behavior: skip`` is skipped, as Codex
itself does; an unreadable carve-out inside a writable root is refused. ``tmpdir`` needs nothing:
every ``workspaceWrite`` command gets a private ``TMPDIR``.
"""

from __future__ import annotations

import os
from typing import Final

from protocol import ErrorCode, ProtocolError, SandboxMode, SandboxPolicy
from protocol import _codex as c
from protocol._messages import MAX_READ_ONLY_SUBPATHS

SLASH_TMP: Final = "/tmp"


def _unavailable(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.SANDBOX_UNAVAILABLE, f"sandbox unavailable: {message}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def policy_for(
    profile: c.SandboxProfile | None, *, cwd: str, enforce_managed_network: bool = False
) -> SandboxPolicy | None:
    """Our policy for Codex's permissions profile; None means "the server's default".

    Raises:
        ProtocolError: -32006, the profile asks for something our sandbox cannot enforce exactly.
    """
    if profile is None:
        if enforce_managed_network:
            # The default policy may allow network; managed networking must not get it.
            return SandboxPolicy(mode=SandboxMode.READ_ONLY)
        return None
    if profile.kind is not c.ProfileKind.MANAGED:
        # "disabled"/"external": Codex itself would not sandbox. Our mode "none", which the
        # operator must have allowed (--allow-unsandboxed), else -32006 at resolve time.
        return SandboxPolicy(mode=SandboxMode.NONE)
    network = profile.network_enabled and not enforce_managed_network
    if profile.file_system_unrestricted:
        # Everything writable, and still network off and no root: Landlock with "/" writable.
        return SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE, writable_roots=("/",), network=network)
    roots = profile.workspace_roots or ((profile.cwd or cwd),)

    def targets(entry: c.PermissionEntry) -> tuple[str, ...]:
        if entry.path is not None:
            return (entry.path,)
        match entry.special:
            case "root":
                return ("/",)
            case "project_roots":
                return tuple(os.path.join(root, entry.subpath) if entry.subpath else root for root in roots)
            case "current_working_directory":
                base = profile.cwd or cwd
                return (os.path.join(base, entry.subpath) if entry.subpath else base,)
            case "slash_tmp":
                return (SLASH_TMP,)
            case "tmpdir":
                return ()  # our workspaceWrite gives every command a private TMPDIR
        raise _unavailable(f"special path {entry.special!r} is not supported")

    readable_everywhere = False
    writable: list[str] = []
    narrower: list[tuple[str, c.PermissionEntry]] = []
    for entry in profile.entries:
        for target in targets(entry):
            if entry.access is c.Access.WRITE:
                writable.append(target)
            elif target == "/" and entry.access is c.Access.READ:
                readable_everywhere = True
            else:
                narrower.append((target, entry))
    if "/" in writable:
        readable_everywhere = True
    if not readable_everywhere:
        raise _unavailable("a profile that does not read the whole file system cannot be enforced here (reads are never restricted)")
    carve_outs: list[str] = []
    for target, entry in narrower:
        # A read-only (or unreadable) carve-out: harmless outside every writable root (we
        # never restrict reads, and "none" inside them is not expressible either).
        covering = [root for root in writable if _inside(target, root) and target != root]
        if entry.access is c.Access.READ and not covering:
            continue
        if entry.skip_if_missing and not os.path.lexists(target):
            continue  # Codex skips a missing carve-out too
        if entry.access is not c.Access.READ:
            raise _unavailable(f"unreadable carve-out {target!r} inside a writable root cannot be enforced here")
        relative = os.path.relpath(target, covering[0])
        if relative not in carve_outs:
            carve_outs.append(relative)
    if len(carve_outs) > MAX_READ_ONLY_SUBPATHS:
        raise _unavailable(f"more than {MAX_READ_ONLY_SUBPATHS} read-only carve-outs cannot be enforced here")
    if not writable:
        return SandboxPolicy(mode=SandboxMode.READ_ONLY, network=network)
    base = profile.cwd or cwd
    if not any(_inside(base, root) for root in writable):
        # Our workspaceWrite always makes cwd writable: that would widen this profile.
        raise _unavailable(f"cwd {base!r} is not writable in this profile, and our workspaceWrite makes it writable")
    return SandboxPolicy(
        mode=SandboxMode.WORKSPACE_WRITE,
        writable_roots=tuple(dict.fromkeys(writable)),
        network=network,
        # Exactly the profile's carve-outs (none: none, not our defaults).
        read_only_subpaths=tuple(carve_outs),
    )


