"""Per-command cgroups: the kernel's memory and pids limits, and its record of which was hit.

Why cgroups and not rlimits for these two: ``RLIMIT_AS``/``RLIMIT_DATA`` limit one process's
address space (a command of ten processes gets ten budgets, and a Go or Java runtime's
reservations trip it long before it uses memory), and ``RLIMIT_NPROC`` counts every process
of the uid on the host, so a limit of 64 would refuse a command because the server's other
commands (or the operator's shell) run as the same user. A cgroup counts exactly the
command's tree, charges what it really uses, and keeps counters — ``oom_kill`` in
``memory.events`` (v2) or ``memory.oom_control`` (v1), ``max`` in ``pids.events`` — so the
record says which limit was hit from the kernel's own account.

Where: one directory per command, directly under the server's own cgroup in each hierarchy
that holds a controller we need (``/proc/self/cgroup`` + ``/proc/self/mountinfo``). cgroup v2
is used when it has the controller; otherwise the v1 hierarchy of that controller (hosts
that mount v1 controllers next to an empty v2 ``unified`` tree). The launcher joins them
before it does anything else (``launcher.c``, the limits block), so the whole tree is inside.

Names carry the server's pid namespace, pid and start time
(``exec-server.<pidns>.<pid>.<start>.<n>``): a directory whose server no longer runs is stale
and removed when a server of the same pid namespace starts (a pid means nothing in another
namespace, and containers may share a cgroup). A command's
directory is removed when the command closes; members still in it are killed first (SIGKILL
through a pidfd, only after the pid was seen in ``cgroup.procs``), and a directory the kernel
still calls busy is retried at the next command and at server exit.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import signal
from collections.abc import Callable, Iterable
from typing import Final

import attrs

MEMORY: Final = "memory"
PIDS: Final = "pids"
CONTROLLERS: Final = (MEMORY, PIDS)
PREFIX: Final = "exec-server."
_V2_MOUNT_TYPE: Final = "cgroup2"
_V1_MOUNT_TYPE: Final = "cgroup"
# Rounds of "list members, kill them" on close: a member forking while we kill it is still
# bounded by pids.max, and a later sweep retries whatever remains.
_KILL_ROUNDS: Final = 4
# What the start-up probe writes (any valid value would do).
_PROBE_MEMORY_BYTES: Final = 1 << 30
_PROBE_PIDS: Final = 1024


class CgroupError(Exception):
    """A cgroup could not be created or configured (the message says which file)."""


@attrs.frozen
class Hierarchy:
    """One mounted cgroup hierarchy as this process sees it.

    Attributes:
        version: 1 or 2.
        own: the directory of this process's cgroup in it (absolute path in the mount).
        controllers: the controllers of ours it provides (``memory``, ``pids``).
    """

    version: int
    own: str
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_hierarchies(
    mountinfo: str, proc_cgroup: str, v2_controllers: Callable[[str], frozenset[str]]
) -> dict[str, Hierarchy]:
    """Which hierarchy provides each of ``CONTROLLERS`` for this process.

    Args:
        mountinfo: the text of ``/proc/self/mountinfo``.
        proc_cgroup: the text of ``/proc/self/cgroup``.
        v2_controllers: reads a v2 cgroup directory's ``cgroup.controllers``.

    Returns:
        controller → hierarchy; v2 wins when it has the controller. Missing = no cgroup.
    """
    v1_paths: dict[str, str] = {}
    v2_path: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, names, path = parts
        if hierarchy_id == "0" and names == "":
            v2_path = path
        else:
            for name in names.split(","):
                v1_paths[name] = path
    found: dict[str, Hierarchy] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        fs_type, super_options = fields[dash + 1], fields[dash + 3].split(",")
        if fs_type == _V2_MOUNT_TYPE and v2_path is not None:
            own = _own_dir(mount_point, root, v2_path)
            if own is None:
                continue
            provides = frozenset(CONTROLLERS) & v2_controllers(own)
            for controller in provides:  # v2 wins over a v1 line seen before it
                found[controller] = Hierarchy(2, own, provides)
        elif fs_type == _V1_MOUNT_TYPE:
            for controller in CONTROLLERS:
                if controller in super_options and controller in v1_paths and controller not in found:
                    own = _own_dir(mount_point, root, v1_paths[controller])
                    if own is not None:
                        found[controller] = Hierarchy(1, own, frozenset({controller}))
    return found


def _own_dir(mount_point: str, mount_root: str, cgroup_path: str) -> str | None:
    """Our cgroup's directory, or None when the mount does not show it (another subtree)."""
    root = mount_root.rstrip("/") + "/"
    if cgroup_path != mount_root and not cgroup_path.startswith(root):
        return None
    relative = cgroup_path[len(mount_root) :].strip("/")
    return os.path.join(mount_point, relative) if relative else mount_point


def _read_v2_controllers(directory: str) -> frozenset[str]:
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as handle:
            return frozenset(handle.read().split())
    except OSError:
        return frozenset()


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise CgroupError(f"cannot write {text.strip()!r} to {path}: {exc.strerror}") from None


def _counter(path: str, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (memory.events, pids.events, oom_control).

    An empty ``key`` reads a file that holds a single number (memory.failcnt).
    """
    try:
        text = _read(path)
    except OSError:
        return 0
    if not key:
        try:
            return int(text.strip())
        except ValueError:
            return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _has_key(path: str, key: str) -> bool:
    try:
        return any(line.partition(" ")[0] == key for line in _read(path).splitlines())
    except OSError:
        return False


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def pid_namespace() -> str:
    """This process's pid namespace (its inode number): what a pid in a name is relative to."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _members(directory: str) -> list[int]:
    try:
        return [int(pid) for pid in _read(os.path.join(directory, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def kill_members(directory: str) -> None:
    """SIGKILL every process in the cgroup ``directory`` (never a pid not seen in it)."""
    kill_file = os.path.join(directory, "cgroup.kill")  # v2, Linux 5.14
    if os.path.exists(kill_file):
        try:
            _write(kill_file, "1")
            return
        except CgroupError:
            pass
    for _ in range(_KILL_ROUNDS):
        members = _members(directory)
        if not members:
            return
        for pid in members:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # already gone
            try:
                # Listed after the pidfd was opened: the pidfd's process is the member (or
                # it died and its pid now names another member).
                if pid in _members(directory):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)


def remove(directory: str) -> bool:
    """Kill what is left in ``directory`` and remove it; False if the kernel says busy."""
    kill_members(directory)
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise CgroupError(f"cannot remove {directory}: {exc.strerror}") from None
    return True


class _State(enum.Enum):
    OPEN = "open"
    REMOVED = "removed"


class CommandCgroup:
    """The cgroup directories of one command (one per hierarchy) and their counters.

    Created by :meth:`CgroupPool.create`; :meth:`close` removes them (idempotent).
    """

    def __init__(self, pool: CgroupPool, dirs: dict[str, str]) -> None:
        self._pool = pool
        self._dirs = dirs  # controller -> directory
        self._state = _State.OPEN

    @property
    def directories(self) -> tuple[str, ...]:
        """The distinct directories the launcher joins (``--cgroup``)."""
        return tuple(dict.fromkeys(self._dirs.values()))

    def oom_kills(self, signum: int | None) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup.

        ``signum`` (what ended the command) matters only on kernels without an OOM-kill
        counter, where a failure count plus a SIGKILL is the closest evidence.
        """
        directory = self._dirs.get(MEMORY)
        if directory is None:
            return 0
        if self._pool.hierarchies[MEMORY].version == 2:
            return _counter(os.path.join(directory, "memory.events"), "oom_kill")
        control = os.path.join(directory, "memory.oom_control")
        if _has_key(control, "oom_kill"):
            return _counter(control, "oom_kill")
        # Kernels before 4.13 count no OOM kills in v1: the limit's failure count is the
        # closest record (the caller also wants the command killed by SIGKILL).
        if signum != signal.SIGKILL:
            return 0
        return max(_counter(os.path.join(directory, name), "") for name in ("memory.failcnt", "memory.memsw.failcnt"))

    def fork_refusals(self) -> int:
        """How many forks ``pids.max`` refused in this cgroup."""
        directory = self._dirs.get(PIDS)
        if directory is None:
            return 0
        return _counter(os.path.join(directory, "pids.events"), "max")

    def close(self) -> None:
        """Kill leftover members and remove the directories (busy ones are retried later)."""
        if self._state is _State.REMOVED:
            return
        self._state = _State.REMOVED
        self._pool.release(self.directories)


class CgroupPool:
    """This server's per-command cgroups: where they go, and the ones still to remove.

    Args:
        hierarchies: controller → hierarchy, for the controllers that work here.
    """

    def __init__(self, hierarchies: dict[str, Hierarchy]) -> None:
        self.hierarchies = hierarchies
        start = _start_time(os.getpid()) or "0"
        self._prefix = f"{PREFIX}{pid_namespace()}.{os.getpid()}.{start}."
        self._counter = itertools.count(1)
        self._pending: set[str] = set()

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.hierarchies)

    def create(self, memory_bytes: int | None, pids: int | None) -> CommandCgroup:
        """Make the directories of one command and write its limits.

        Raises:
            CgroupError: a directory or limit file could not be written (nothing is left).
        """
        self.sweep()
        name = f"{self._prefix}{next(self._counter)}"
        wanted = {MEMORY: memory_bytes, PIDS: pids}
        dirs: dict[str, str] = {}
        made: list[str] = []
        try:
            for controller, value in wanted.items():
                if value is None:
                    continue
                hierarchy = self.hierarchies[controller]
                directory = os.path.join(hierarchy.own, name)
                if directory not in made:
                    os.mkdir(directory)
                    made.append(directory)
                dirs[controller] = directory
                if controller == MEMORY:
                    _write_memory_limit(hierarchy.version, directory, value)
                else:
                    _write(os.path.join(directory, "pids.max"), str(value))
        except OSError as exc:
            self.release(made)
            raise CgroupError(f"cannot create a cgroup for the command: {exc}") from None
        except CgroupError:
            self.release(made)
            raise
        return CommandCgroup(self, dirs)

    def release(self, directories: Iterable[str]) -> None:
        for directory in directories:
            try:
                if not remove(directory):
                    self._pending.add(directory)
            except CgroupError:
                self._pending.add(directory)

    def sweep(self) -> None:
        """Retry the removal of directories that were busy."""
        for directory in list(self._pending):
            try:
                done = remove(directory)
            except CgroupError:
                done = False
            if done:
                self._pending.discard(directory)

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)


def _write_memory_limit(version: int, directory: str, value: int) -> None:
    if version == 2:
        _write(os.path.join(directory, "memory.max"), str(value))
        swap = os.path.join(directory, "memory.swap.max")
        if os.path.exists(swap):  # swap would let the command exceed the limit unseen
            _write(swap, "0")
        # One OOM kill takes the whole command, not a random member of it.
        _write(os.path.join(directory, "memory.oom.group"), "1")
        return
    _write(os.path.join(directory, "memory.limit_in_bytes"), str(value))
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):  # after limit_in_bytes: memsw may never be below it
        _write(memsw, str(value))


def sweep_stale(hierarchies: Iterable[Hierarchy]) -> None:
    """Remove the command cgroups of servers that no longer run (their pid or start time changed)."""
    namespace = pid_namespace()
    for own in {hierarchy.own for hierarchy in hierarchies}:
        try:
            names = os.listdir(own)
        except OSError:
            continue
        for name in names:
            if not name.startswith(PREFIX):
                continue
            parts = name[len(PREFIX) :].split(".")
            if len(parts) != 4 or parts[0] != namespace or not parts[1].isdigit():
                continue  # not ours to judge
            if _start_time(int(parts[1])) == parts[2]:
                continue  # its server still runs
            try:
                remove(os.path.join(own, name))
            except CgroupError:
                pass


def _enable_v2(hierarchy: Hierarchy) -> None:
    """Make ``memory``/``pids`` available to children of our v2 cgroup.

    Fails with EBUSY when our cgroup holds processes and is not the root ("no internal
    processes"): run the server in a delegated cgroup of its own then.
    """
    control = os.path.join(hierarchy.own, "cgroup.subtree_control")
    try:
        enabled = frozenset(_read(control).split())
    except OSError as exc:
        raise CgroupError(f"cannot read {control}: {exc.strerror}") from None
    missing = hierarchy.controllers - enabled
    if missing:
        _write(control, " ".join(f"+{name}" for name in sorted(missing)))


def detect(
    *, mountinfo_path: str = "/proc/self/mountinfo", cgroup_path: str = "/proc/self/cgroup"
) -> tuple[CgroupPool | None, dict[str, str]]:
    """Find the hierarchies where this server can make per-command cgroups, and probe them.

    Removes stale command cgroups of dead servers on the way.

    Returns:
        The pool (None if no controller works) and, per controller that does not work,
        why not.
    """
    problems: dict[str, str] = {}
    try:
        found = parse_hierarchies(_read(mountinfo_path), _read(cgroup_path), _read_v2_controllers)
    except OSError as exc:
        return None, dict.fromkeys(CONTROLLERS, f"cannot read the process's cgroups: {exc.strerror}")
    for controller in CONTROLLERS:
        if controller not in found:
            problems[controller] = f"no cgroup hierarchy with the {controller} controller"
    sweep_stale(found.values())
    working: dict[str, Hierarchy] = {}
    for controller, hierarchy in found.items():
        try:
            if hierarchy.version == 2:
                _enable_v2(hierarchy)
            probe = CgroupPool({controller: hierarchy})
            if controller == MEMORY:
                probe.create(_PROBE_MEMORY_BYTES, None).close()
            else:
                probe.create(None, _PROBE_PIDS).close()
            if probe.pending:
                raise CgroupError(f"cannot remove the probe cgroup in {hierarchy.own}")
        except CgroupError as exc:
            problems[controller] = str(exc)
            continue
        working[controller] = hierarchy
    return (CgroupPool(working) if working else None), problems
