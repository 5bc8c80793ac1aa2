"""Private temp dirs: their names, their removal, and the sweep of those a killed server left.

A command's private temp dir holds whatever the command put there: a million files, a tree
a thousand levels deep, symlinks to ``/etc``, directories it made unreadable. Removing it
must not crash the server, follow a link out of the tree, or stall the event loop, so:

- ``remove_tree`` walks by directory fd (``openat``/``unlinkat`` relative to an fd opened
  with ``O_NOFOLLOW``), never by path, and never recurses. It keeps at most
  ``MAX_OPEN_LEVELS`` directory fds open: a deeper subtree is first moved up to the top of
  the tree (``renameat`` between two fds it holds), which flattens any depth.
- It stops after ``REMOVE_SECONDS`` (what is left is logged and swept at the next start)
  and never raises.
- Callers run it in a worker thread (``trio.to_thread``), never on the event loop.

Names carry the server's pid and its start time (``exec-sandbox-<pid>.<start>-XXXX``): at
start, ``sweep_stale`` removes the dirs whose server no longer runs. A dir whose pid runs
with the same start time belongs to a live server and is left alone, as is any name not of
that form.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
import time
from typing import Final

import trio

log = logging.getLogger(__name__)

TEMP_PREFIX: Final = "exec-sandbox-"
# How long one removal may take before it gives up (the rest is swept at the next start).
REMOVE_SECONDS: Final = 30.0
# Directory fds one removal holds at most; deeper levels are moved up first.
MAX_OPEN_LEVELS: Final = 32
_STALE_NAME: Final = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)\.(\d+)-")
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_RWX: Final = stat.S_IRWXU


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def private_dir_prefix() -> str:
    """The name prefix of this process's private temp dirs (for ``tempfile.mkdtemp``)."""
    return f"{TEMP_PREFIX}{os.getpid()}.{_start_time(os.getpid()) or 0}-"


class _Level:
    """One open directory of the walk: its fd, its name in the parent, the subdirs still to do."""

    def __init__(self, fd: int, name: str, subdirs: list[str]) -> None:
        self.fd = fd
        self.name = name
        self.subdirs = subdirs


def _open_dir(name: str, parent_fd: int) -> int | None:
    """Open ``name`` under ``parent_fd`` as a directory, never through a symlink.

    A directory its owner made inaccessible (mode 000) is given back to its owner first;
    something that is not a directory (any more) is unlinked instead. None: not opened.
    """
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except PermissionError:
            if attempt:
                return None
            _make_accessible(name, parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # a file, or a symlink planted there
                _unlink(name, parent_fd)
            return None
    return None


def _make_accessible(name: str, parent_fd: int) -> None:
    try:
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return
    try:
        # chmod through the fd's /proc link: it names this very inode, never a symlink.
        os.chmod(f"/proc/self/fd/{path_fd}", _OWNER_RWX)
    except OSError:
        pass
    finally:
        os.close(path_fd)


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _scan(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return its subdirectories."""
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & _OWNER_RWX != _OWNER_RWX:
            os.fchmod(fd, _OWNER_RWX)  # a dir the command made read-only: entries could not go
    except OSError:
        pass
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    subdirs.append(entry.name)
                else:
                    _unlink(entry.name, fd)
    except OSError:
        pass
    return subdirs


def remove_tree(path: str, *, seconds: float = REMOVE_SECONDS) -> bool:
    """Remove the directory ``path`` and everything below it. Blocking: run it in a thread.

    Returns:
        Whether ``path`` is gone. Never raises.
    """
    try:
        return _remove_tree(path, time.monotonic() + seconds)
    except Exception:  # a bug here must not take the server down with it
        log.exception("removing %s failed", path)
        return False


def _remove_tree(path: str, deadline: float) -> bool:
    parent, name = os.path.split(os.path.abspath(path))
    try:
        os.rmdir(path)  # the common case: the command left nothing behind
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        parent_fd = os.open(parent, _DIR_FLAGS)
    except OSError:
        return False
    try:
        root_fd = _open_dir(name, parent_fd)
        if root_fd is None:
            return not _exists(name, parent_fd)
        stack = [_Level(root_fd, name, _scan(root_fd))]
        moved = 0
        while stack:
            if time.monotonic() > deadline:
                log.warning("gave up removing %s after %.0fs; the next start sweeps it", path, REMOVE_SECONDS)
                for level in stack:
                    os.close(level.fd)
                return False
            level = stack[-1]
            if level.subdirs:
                child = level.subdirs.pop()
                if len(stack) >= MAX_OPEN_LEVELS:
                    # Too deep to hold every level open: move the subtree up to the root.
                    moved += 1
                    flat = f".flat-{moved}"
                    try:
                        os.rename(child, flat, src_dir_fd=level.fd, dst_dir_fd=stack[0].fd)
                        stack[0].subdirs.append(flat)
                    except OSError:
                        pass
                    continue
                child_fd = _open_dir(child, level.fd)
                if child_fd is not None:
                    stack.append(_Level(child_fd, child, _scan(child_fd)))
                continue
            stack.pop()
            os.close(level.fd)
            holder = stack[-1].fd if stack else parent_fd
            try:
                os.rmdir(level.name, dir_fd=holder)
            except FileNotFoundError:
                pass
            except OSError:
                # Something still writes there (an orphan of the command): go round again.
                if stack:
                    stack[-1].subdirs.append(level.name)
                else:
                    again = _open_dir(level.name, parent_fd)
                    if again is not None:
                        stack.append(_Level(again, level.name, _scan(again)))
        return not _exists(name, parent_fd)
    finally:
        os.close(parent_fd)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def _is_stale(entry: os.DirEntry[str], euid: int) -> bool:
    match = _STALE_NAME.match(entry.name)
    if match is None:
        return False
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    # A root server hands each dir to the uid its command runs as.
    if not stat.S_ISDIR(info.st_mode) or (euid != 0 and info.st_uid != euid):
        return False
    pid, started = int(match.group(1)), int(match.group(2))
    if pid == os.getpid():
        return started != (_start_time(pid) or 0)
    return _start_time(pid) != started  # None (no such pid) is stale too


def sweep_stale(directory: str | None = None, *, seconds: float = REMOVE_SECONDS) -> int:
    """Remove the private temp dirs of servers that no longer run, for at most ``seconds``
    in all. Blocking; never raises.

    Returns:
        How many were removed.
    """
    deadline = time.monotonic() + seconds
    euid = os.geteuid()
    removed = 0
    try:
        with os.scandir(directory or tempfile.gettempdir()) as entries:
            stale = [entry.path for entry in entries if _is_stale(entry, euid)]
    except OSError:
        return 0
    for path in stale:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if remove_tree(path, seconds=left):
            removed += 1
    return removed


async def sweep_stale_in_thread() -> None:
    """``sweep_stale`` in a worker thread, logging what it removed (a server's start task)."""
    removed = await trio.to_thread.run_sync(sweep_stale)
    if removed:
        log.info("removed %d stale private temp dir(s) of servers that no longer run", removed)
