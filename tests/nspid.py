"""Pids a command prints about itself, seen from the host.

Every command runs as PID 2 of its own PID namespace (the launcher's init is PID 1), so the
``$$`` or ``$!`` it prints is a pid of that namespace. A test that watches or signals such a
process from the host translates it here.
"""

from __future__ import annotations

import os

import psutil


def _ns_pid(pid: int) -> tuple[str, int] | None:
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    levels = line.split()[1:]
                    return (namespace, int(levels[-1])) if len(levels) > 1 else None
    except (OSError, ValueError):
        return None
    return None


def host_pid(ns_pid: int, launched: int) -> int:
    """The host pid of the process called ``ns_pid`` in the namespace of command ``launched``.

    ``launched`` is the pid the server reported (the launcher). Once it is gone (the
    command exited), the process is looked for among this test's descendants, which must
    then hold one command tree only.

    Raises:
        LookupError: no such process, or more than one candidate.
    """
    try:
        wanted: str | None = os.readlink(f"/proc/{launched}/ns/pid_for_children")
    except OSError:
        wanted = None
    # A scan of /proc is not atomic: a launcher that exits during it re-parents the init, and
    # the scan can miss the link. A later scan sees the settled tree.
    found: list[int] = []
    for _attempt in range(3):
        found = []
        for child in psutil.Process().children(recursive=True):
            seen = _ns_pid(child.pid)
            if seen is not None and seen[1] == ns_pid and wanted in (None, seen[0]):
                found.append(child.pid)
        if found:
            break
    if len(found) != 1:
        raise LookupError(f"pid {ns_pid} of the namespace of {launched}: {found or 'not found'}")
    return found[0]


def descendant_running(*argv: str) -> int | None:
    """The host pid of this test's descendant whose command line is exactly ``argv``, if
    one runs (one only: give each a distinct argument); None when there is none."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if tuple(child.cmdline()) == argv:
                found.append(child.pid)
        except psutil.Error:
            continue
    if len(found) > 1:
        raise LookupError(f"more than one process runs {argv}: {found}")
    return found[0] if found else None
