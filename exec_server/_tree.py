"""Process trees: find and signal every descendant of a command, even those that left its group.

Each command runs in its own process group, so ``killpg`` reaches most of the tree. A
descendant that called ``setsid``/``setpgid`` has left the group; while its ancestors live
we find it through the parent links. Through the sandbox launcher (every sandboxed command,
and unsandboxed ones on a root server) the tree lives in its own PID namespace: its orphans
are adopted by the namespace's init, which itself is re-parented to us (the server is a child
subreaper) once the command was reaped, and carries the tree's marker in its own environment,
which the command cannot scrub. Killing the init kills the whole namespace. Without the
launcher the marker in each descendant's environment is the only trace.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

import psutil

# Set in every command's environment: how an orphaned descendant is traced to its tree.
TREE_MARKER_VAR: Final = "EXEC_SERVER_TREE"
_PR_SET_CHILD_SUBREAPER: Final = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def own_children() -> list[int]:
    """Our direct children, from /proc/self/task/*/children (no scan of every process).

    The kernel walks that list by position: a sibling that exits or is re-parented to us
    during the read can make it skip a child that was there all along (proc(5) calls the
    file unreliable; a marked orphan was missed this way once in CI). Two reads, united,
    make a miss need two such races in a row.
    """
    first = _children_of("self")
    if first is None:
        return [child.pid for child in psutil.Process().children()]
    second = _children_of("self") or []
    return list(dict.fromkeys([*first, *second]))


def _children_of(pid: int | str) -> list[int] | None:
    """Direct children of ``pid`` from /proc/PID/task/*/children; None if /proc cannot say."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                pids.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            continue
    return pids


def _descendants(proc: psutil.Process) -> list[int]:
    """Every descendant of ``proc``, walking /proc/PID/task/*/children down the tree.

    psutil's ``children(recursive=True)`` reads the parent of every process on the machine
    instead; each close runs this for the command's namespace init, so that cost grew with
    whatever else ran on the host (py-spy: most of the server's time on a busy machine).
    """
    found: list[int] = []
    pending = [proc.pid]
    while pending:
        children = _children_of(pending.pop())
        if children is None:  # no /proc children files: the whole-table walk
            return [child.pid for child in proc.children(recursive=True)]
        found.extend(children)
        pending.extend(children)
    return found


def _marker_of(proc: psutil.Process) -> str | None:
    try:
        marker: str | None = proc.environ().get(TREE_MARKER_VAR)
        return marker
    except (psutil.Error, OSError):
        return None


def tree_members(root_pid: int | None, marker: str) -> set[int]:
    """Every live pid of the tree: the root's descendants and marked orphans of ours.

    ``root_pid`` is None once the root was reaped: its number may belong to an unrelated
    process by then, so only the marker is trusted (every descendant whose ancestors died
    has been re-parented to us, the subreaper).
    """
    pids: set[int] = set()
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid)
            if root.status() != psutil.STATUS_ZOMBIE:
                pids.add(root_pid)
            pids.update(_descendants(root))
        except psutil.Error:
            pass
    for pid in own_children():
        if pid == root_pid or _reaped_orphan(pid):
            continue
        try:
            orphan = psutil.Process(pid)
            if _marker_of(orphan) == marker:
                pids.add(pid)
                pids.update(_descendants(orphan))
        except psutil.Error:
            pass
    return pids


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def signal_tree(pgid: int, marker: str, signum: int, *, reaped: bool, group_only: bool = False) -> bool:
    """Send ``signum`` to a command's tree: its process group, and (unless ``group_only``)
    every member, including those that left the group.

    Args:
        pgid: the command's pid, which is also its process group id.
        marker: the tree marker in the command's environment.
        reaped: whether the command itself was reaped. Its number may then belong to an
            unrelated process, so it is used only while a marked member still holds the
            group (a live group's id is never reused).

    Returns:
        True if at least one process received it.
    """
    members = tree_members(None if reaped else pgid, marker)
    delivered = False
    if not reaped or any(_group_of(pid) == pgid for pid in members):
        try:
            os.killpg(pgid, signum)
            delivered = True
        except (ProcessLookupError, PermissionError):
            pass
    if group_only:
        return delivered
    for pid in members:
        try:
            os.kill(pid, signum)
            delivered = True
        except (ProcessLookupError, PermissionError):
            pass
    return delivered


# Pids whose exit status a process waiter will collect. Process-wide, not per server: two
# servers in one process (tests, `exec-server try`) must not reap each other's commands.
_WAITED_FOR: set[int] = set()


def register_waited(pid: int) -> None:
    _WAITED_FOR.add(pid)


def unregister_waited(pid: int) -> None:
    _WAITED_FOR.discard(pid)


def _reaped_orphan(pid: int) -> bool:
    """Reap ``pid`` if it is a zombie child that no process waiter owns; True if it was.

    One ``waitpid(pid, WNOHANG)``: it returns at once for a live child. Each command's PID
    namespace init is re-parented to us and exits moments after the command; reaping those
    here, as every close scans our children, keeps the scan from growing with every command
    run since the last periodic reap (reading a zombie's environ costs tens of µs each).
    """
    if pid in _WAITED_FOR:
        return False
    try:
        reaped, _status = os.waitpid(pid, os.WNOHANG)
    except OSError:  # not our child (any more), or reaped meanwhile
        return False
    return reaped == pid


def reap_orphans() -> None:
    """Reap zombie children of ours that no process waiter owns (re-parented orphans).

    Reaps by pid only: ``waitpid(-1)`` would steal the exit status of a command whose
    waiter has not collected it yet.
    """
    for pid in own_children():
        _reaped_orphan(pid)


SIGNALS: Final = {
    "interrupt": signal.SIGINT,
    "terminate": signal.SIGTERM,
    "kill": signal.SIGKILL,
    "hangup": signal.SIGHUP,
}
