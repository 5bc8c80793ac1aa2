"""Which sandboxed process trees hit a denial: audit records mapped to the launched pid.

Mapping design (why each record lands on the right process):

- **Landlock** (``LANDLOCK_ACCESS`` 1423, ``LANDLOCK_DOMAIN`` 1424). Every launch calls
  ``landlock_restrict_self`` in the launcher, which then execs the command, so the domain's
  creator pid *is* the command's pid — the pid the server reaps. Descendants inherit the domain
  and their denials carry its id. The kernel writes ``LANDLOCK_DOMAIN status=allocated pid=…``
  once per domain, right after that domain's first ``LANDLOCK_ACCESS`` record (same event
  serial), so ACCESS records wait in ``pending`` for the domain record. Nothing here depends on
  the offending grandchild still existing: the domain id carries the identity.
- **seccomp** (``SECCOMP`` 1326, from the launcher's network filter with
  ``SECCOMP_FILTER_FLAG_LOG``) carries only the offending task's pid (and no SYSCALL record
  follows: seccomp refuses the call before syscall auditing starts). The task is placed by the
  fork history of the process connector (``_proctree``): every descendant's parent, recorded
  inside ``fork()`` itself, so it still answers for a grandchild that exited and was reaped
  before its record was read (measured: 100/100 such grandchildren, against 46-52/100 from
  ``/proc`` alone). Without the connector (no CAP_NET_ADMIN) we walk ``/proc/<pid>/stat``
  parents up to the child of this server, which needs the task to still exist (running or a
  zombie); a gone task's record is kept under its own pid and usually lost.
- **the view** (``SYSCALL`` 1300 with ``key="exec-server-denial"``, plus its ``CWD``/``PATH``
  records and ``EOE``). The read-only view refuses writes, chmod/chown/utimes/xattr changes,
  renames and links outside the writable roots with EROFS before Landlock's hooks run, and a
  root command without capabilities meets EACCES/EPERM (masked files, others' files). Our exit
  rules (see ``_audit.denial_rules``) log such failures; the record carries ``pid`` and
  ``ppid`` and is placed like a seccomp record, with the parent as a second chance when the
  task is already gone. If Landlock also reported the same event (same serial), the SYSCALL
  record is not counted twice.
- A pid that is not ours (another Landlock or seccomp user on the host) is dropped. A pid that
  is already gone is kept *unverified* for :data:`UNVERIFIED_TTL_S`: that is the window
  between the server reaping its child and asking for the report.
- The server may be a child subreaper: an orphaned descendant is then re-parented to the
  server, and is told apart from a launched command because it is not a process-group leader
  (the server starts every command with ``process_group=0``); its group names its command.

Memory is bounded: at most :data:`MAX_DENIALS_PER_PROCESS` denials kept per process (the count
goes on), :data:`MAX_TRACKED` processes and domains, and a process is forgotten once reported.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from protocol import Denial, SandboxMode, SandboxPolicy

from ._audit import (
    AUDIT_CWD,
    AUDIT_EOE,
    AUDIT_LANDLOCK_ACCESS,
    AUDIT_LANDLOCK_DOMAIN,
    AUDIT_PATH,
    AUDIT_SECCOMP,
    AUDIT_SYSCALL,
    DEFAULT_LOCK_PATH,
    EXEC_SYSCALLS,
    METADATA_SYSCALLS,
    OPEN_SYSCALLS,
    RULE_KEY,
    TREE_SYSCALLS,
    AuditBacklogProbe,
    AuditLease,
    AuditReadLog,
    AuditRecord,
    AuditUnavailable,
    acquire_audit,
    permission_problem,
)
from ._heuristic import guess_denials
from ._proctree import ForkTracker

log = logging.getLogger(__name__)

MAX_DENIALS_PER_PROCESS: Final = 8
MAX_TRACKED: Final = 1024
UNVERIFIED_TTL_S: Final = 2.0
# After the reap, records may still sit in the kernel's audit queue (kauditd had not run yet:
# 22 of 300 denied runs on this 2-core VM under load 6, 0 missed with the settle). We ask the
# kernel for its backlog and wait while it is non-empty, at most this long in all.
SETTLE_BUDGET_S: Final = 0.025
SETTLE_POLL_S: Final = 0.0005
_MAX_ANCESTRY: Final = 64
FORK_DRAIN_INTERVAL_S: Final = 0.05
# Landlock ABI 7 added LANDLOCK_RESTRICT_SELF_LOG_* and the audit records.
AUDIT_MIN_LANDLOCK_ABI: Final = 7

SOURCE_AUDIT: Final = "audit"
SOURCE_HEURISTIC: Final = "heuristic"
SOURCE_NONE: Final = "none"
AUDIT_MODES: Final = ("auto", "on", "off")

# Syscall numbers that the launcher's seccomp filter may log, by audit arch.
_SYSCALL_NAMES: Final = {
    "c000003e": {41: "socket", 42: "connect", 49: "bind", 53: "socketpair", 44: "sendto"},
    "c00000b7": {198: "socket", 203: "connect", 200: "bind", 199: "socketpair", 206: "sendto"},
}


@attrs.frozen
class DenialReport:
    """Whether a process tree was denied by the sandbox, and what was blocked (first few)."""

    denied: bool
    denials: tuple[Denial, ...]
    source: str  # "audit" | "heuristic" | "none" (unsandboxed)


NOT_SANDBOXED: Final = DenialReport(denied=False, denials=(), source=SOURCE_NONE)


@attrs.define
class _Tally:
    denials: list[Denial] = attrs.Factory(list)
    count: int = 0
    verified: bool = True
    seen_at: float = 0.0

    def add(self, denial: Denial) -> None:
        self.count += 1
        if len(self.denials) < MAX_DENIALS_PER_PROCESS and denial not in self.denials:
            self.denials.append(denial)


def landlock_denial(fields: dict[str, str]) -> Denial:
    """Build a :class:`Denial` from a ``LANDLOCK_ACCESS`` record's fields."""
    blocker = fields.get("blockers", "unknown")
    if "path" in fields:
        target = fields["path"]
    elif "daddr" in fields or "dest" in fields:
        target = _endpoint(fields.get("daddr", ""), fields.get("dest", ""))
    elif "saddr" in fields or "src" in fields:
        target = _endpoint(fields.get("saddr", ""), fields.get("src", ""))
    elif "opid" in fields:
        target = f"pid {fields['opid']} ({fields.get('ocomm', '?')})"
    else:
        target = ""
    return Denial(blocker=blocker, target=target)


def _endpoint(address: str, port: str) -> str:
    address = address or "*"
    if ":" in address:
        address = f"[{address}]"
    return f"{address}:{port}" if port else address


def seccomp_denial(fields: dict[str, str]) -> Denial:
    """Build a :class:`Denial` from a ``SECCOMP`` record's fields (blocker ``seccomp``)."""
    arch = fields.get("arch", "")
    syscall = fields.get("syscall", "?")
    try:
        name = _SYSCALL_NAMES.get(arch, {}).get(int(syscall), f"syscall {syscall}")
    except ValueError:
        name = f"syscall {syscall}"
    return Denial(blocker="seccomp", target=name)


_O_ACCMODE: Final = 0o3
_AT_REMOVEDIR: Final = 0x200
_TREE_BLOCKERS: Final = {
    "truncate": "fs.truncate", "mkdir": "fs.make_dir", "mkdirat": "fs.make_dir", "rmdir": "fs.remove_dir",
    "unlink": "fs.remove_file", "unlinkat": "fs.remove_file", "rename": "fs.rename", "renameat": "fs.rename",
    "renameat2": "fs.rename", "link": "fs.link", "linkat": "fs.link", "symlink": "fs.make_sym",
    "symlinkat": "fs.make_sym", "mknod": "fs.make_node", "mknodat": "fs.make_node",
}  # fmt: skip


def _syscall_blocker(syscall: int, args: tuple[int, ...]) -> str:
    """The denial's name for a refused call: Landlock's vocabulary where it has one."""
    if syscall in EXEC_SYSCALLS.values():
        return "fs.execute"
    for name, (number, flags_arg) in OPEN_SYSCALLS.items():
        if number == syscall:
            if flags_arg is None:
                return "fs.write_file" if name == "creat" else "fs.open"
            return "fs.write_file" if args[flags_arg] & _O_ACCMODE else "fs.read_file"
    for name, number in TREE_SYSCALLS.items():
        if number == syscall:
            if name == "unlinkat" and args[2] & _AT_REMOVEDIR:
                return "fs.remove_dir"
            return _TREE_BLOCKERS[name]
    name = next((n for n, number in METADATA_SYSCALLS.items() if number == syscall), "")
    for family in ("chmod", "chown", "utime", "xattr"):
        if family in name:
            return f"fs.{family}"
    return f"fs.syscall_{syscall}"


def _hex_args(fields: dict[str, str]) -> tuple[int, ...]:
    values = []
    for key in ("a0", "a1", "a2", "a3"):
        try:
            values.append(int(fields.get(key, "0"), 16))
        except ValueError:
            values.append(0)
    return tuple(values)


@attrs.define
class _SyscallEvent:
    """A SYSCALL record of our view rules, waiting for its CWD/PATH records and EOE."""

    pid: int
    ppid: int
    syscall: int
    args: tuple[int, ...] = (0, 0, 0, 0)
    cwd: str = ""
    path: str = ""
    parent: str = ""

    def denial(self) -> Denial:
        # The object itself; for a creation refused before the name was looked up, the
        # kernel names only the parent directory.
        target = self.path or self.parent
        if target and not target.startswith("/") and self.cwd:
            target = os.path.normpath(os.path.join(self.cwd, target))
        return Denial(blocker=_syscall_blocker(self.syscall, self.args), target=target)


def _stat(pid: int) -> tuple[int, int] | None:
    """Return ``(ppid, pgrp)`` of a live or zombie task, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields start after the last ")".
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[1]), int(rest[2])


@attrs.frozen
class _Placement:
    root: int | None  # the server's child that this task descends from
    verified: bool  # False: the task was already gone, root is a guess (the pid itself)


def place_task(pid: int, server_pid: int) -> _Placement:
    """Find which launched command (a child of ``server_pid``) the task ``pid`` belongs to.

    The server starts every command as its own process-group leader, and may be a child
    subreaper: then an orphaned descendant is re-parented to the server itself. So a child
    of the server that is not a group leader is such an orphan, and its group names its root.

    Returns ``_Placement(root=None)`` for a task that is not ours.
    """
    first = _stat(pid)
    if first is None:
        return _Placement(root=pid, verified=False)
    current, (ppid, pgrp) = pid, first
    for _ in range(_MAX_ANCESTRY):
        if ppid == server_pid:
            return _Placement(root=_launched_root(current, pgrp, server_pid), verified=True)
        if ppid <= 1:
            break
        parent = _stat(ppid)
        if parent is None:
            break
        current, (ppid, pgrp) = ppid, parent
    # Re-parented to init (its parent died) or daemonised: the task's process group still
    # names the command unless the task left it. The group id is not reused while the
    # group has members, so a live leader that is our child is proof.
    group = first[1]
    leader = _stat(group)
    if leader is not None:
        return _Placement(root=group if leader[0] == server_pid else None, verified=True)
    return _Placement(root=None, verified=True)


def _launched_root(child: int, pgrp: int, server_pid: int) -> int:
    """The command a child of the server belongs to: itself, or (an orphan) its group."""
    if pgrp == child:
        return child
    leader = _stat(pgrp)
    # Leader reaped (the command exited) or still our child: an orphan of that command.
    # Otherwise the child simply did not get a group of its own (not how the server spawns).
    if leader is None or leader[0] == server_pid:
        return pgrp
    return child


class DenialLedger:
    """Audit records in, per-process denials out. Pure bookkeeping; no I/O but ``/proc`` reads.

    Args:
        server_pid: the process whose children are the launched commands.
        clock: monotonic seconds, for the unverified-record expiry.
        place: how to map a task pid to its root (``place_task`` by default; tests swap it).
    """

    def __init__(
        self,
        server_pid: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        place: Callable[[int, int], _Placement] = place_task,
    ) -> None:
        self._server_pid = server_pid
        self._clock = clock
        self._place = place
        self._domains: collections.OrderedDict[str, int | None] = collections.OrderedDict()
        self._pending: collections.OrderedDict[str, list[Denial]] = collections.OrderedDict()
        self._tallies: collections.OrderedDict[int, _Tally] = collections.OrderedDict()
        self._syscall_events: collections.OrderedDict[int, _SyscallEvent] = collections.OrderedDict()
        # Serials of events that Landlock already reported: their SYSCALL record (same
        # failure, seen by our rules too) must not count twice.
        self._landlock_serials: collections.deque[int] = collections.deque(maxlen=256)
        self.unattributed = 0

    def feed(self, records: Sequence[AuditRecord]) -> None:
        """Account for a batch of records, in the order the kernel sent them."""
        for record in records:
            if record.type == AUDIT_LANDLOCK_ACCESS:
                self._landlock_serials.append(record.serial)
                self._on_access(record.fields)
            elif record.type == AUDIT_LANDLOCK_DOMAIN:
                self._on_domain(record.fields)
            elif record.type == AUDIT_SECCOMP:
                self._on_seccomp(record.fields)
            elif record.type == AUDIT_SYSCALL:
                self._on_syscall(record)
            elif record.serial in self._syscall_events:
                self._on_syscall_detail(record)
        self._expire()

    def take(self, pid: int) -> tuple[bool, tuple[Denial, ...]]:
        """Return and forget what process ``pid`` (a reaped root) was denied."""
        # An event whose EOE was lost (or not read yet) still counts.
        for serial in list(self._syscall_events):
            self._finish_syscall(serial)
        tally = self._tallies.pop(pid, None)
        # Its domains stay mapped (a surviving grandchild keeps them alive) but nothing will
        # ask about this pid again; mark them so later records are not kept for a reused pid.
        for domain, root in self._domains.items():
            if root == pid:
                self._domains[domain] = None
        if tally is None or tally.count == 0:
            return False, ()
        return True, tuple(tally.denials)

    def _on_access(self, fields: dict[str, str]) -> None:
        domain = fields.get("domain")
        if domain is None:
            return
        denial = landlock_denial(fields)
        if domain in self._domains:
            root = self._domains[domain]
            if root is not None:
                self._tally(root, verified=True).add(denial)
            return
        pending = self._pending.setdefault(domain, [])
        if len(pending) < MAX_DENIALS_PER_PROCESS:
            pending.append(denial)
        _bound(self._pending)

    def _on_domain(self, fields: dict[str, str]) -> None:
        domain = fields.get("domain")
        status = fields.get("status")
        if domain is None:
            return
        if status == "deallocated":
            self._domains.pop(domain, None)
            self._pending.pop(domain, None)
            return
        if status != "allocated":
            return
        pending = self._pending.pop(domain, [])
        try:
            creator = int(fields.get("pid", ""))
        except ValueError:
            return
        placement = self._place(creator, self._server_pid)
        self._domains[domain] = placement.root
        _bound(self._domains)
        if placement.root is None:
            self.unattributed += len(pending)
            return
        tally = self._tally(placement.root, verified=placement.verified)
        for denial in pending:
            tally.add(denial)

    def _on_seccomp(self, fields: dict[str, str]) -> None:
        try:
            pid = int(fields.get("pid", ""))
        except ValueError:
            return
        placement = self._place(pid, self._server_pid)
        if placement.root is None:
            self.unattributed += 1
            return
        self._tally(placement.root, verified=placement.verified).add(seccomp_denial(fields))

    def _on_syscall(self, record: AuditRecord) -> None:
        fields = record.fields
        if fields.get("key") != RULE_KEY or record.serial in self._landlock_serials:
            return
        try:
            event = _SyscallEvent(
                pid=int(fields["pid"]),
                ppid=int(fields["ppid"]),
                syscall=int(fields["syscall"]),
                args=_hex_args(fields),
            )
        except (KeyError, ValueError):
            return
        self._syscall_events[record.serial] = event
        _bound(self._syscall_events)

    def _on_syscall_detail(self, record: AuditRecord) -> None:
        if record.type == AUDIT_EOE:
            self._finish_syscall(record.serial)
            return
        event = self._syscall_events[record.serial]
        if record.type == AUDIT_CWD:
            event.cwd = record.fields.get("cwd", "")
        elif record.type == AUDIT_PATH:
            name = record.fields.get("name", "")
            if record.fields.get("nametype") == "PARENT":
                event.parent = event.parent or name
            else:
                event.path = event.path or name

    def _finish_syscall(self, serial: int) -> None:
        event = self._syscall_events.pop(serial, None)
        if event is None:
            return
        placement = self._place(event.pid, self._server_pid)
        if not placement.verified and event.ppid != self._server_pid:
            # The task is gone; its parent (a shell, a make) may still be there to tell us
            # the tree. (A gone direct child of the server is the command itself.)
            by_parent = self._place(event.ppid, self._server_pid)
            if by_parent.root is not None:
                placement = by_parent
        if placement.root is None:
            self.unattributed += 1
            return
        self._tally(placement.root, verified=placement.verified).add(event.denial())

    def _tally(self, root: int, *, verified: bool) -> _Tally:
        tally = self._tallies.get(root)
        if tally is None:
            tally = self._tallies[root] = _Tally(verified=verified, seen_at=self._clock())
            _bound(self._tallies)
        elif verified and not tally.verified:
            tally.verified = True
        self._tallies.move_to_end(root)
        return tally

    def _expire(self) -> None:
        horizon = self._clock() - UNVERIFIED_TTL_S
        stale = [
            pid
            for pid, tally in self._tallies.items()
            if not tally.verified and tally.seen_at < horizon
        ]
        for pid in stale:
            del self._tallies[pid]


def _bound(mapping: collections.OrderedDict[Any, Any]) -> None:
    while len(mapping) > MAX_TRACKED:
        mapping.popitem(last=False)


class DenialMonitor:
    """Decides ``sandboxDenied``: from kernel audit records when it can, else from stderr.

    Args:
        audit_denials: ``"auto"`` (use audit where permitted), ``"on"`` (audit or fail),
            ``"off"`` (heuristic only, the host's audit state is never touched).
        landlock_abi: the running kernel's Landlock ABI (audit records need 7 or later).
        lock_path: the file that coordinates audit enable/restore between servers on a host.
        uid_drop_rules: also add the syscall audit rules that see what the view refuses
            (chmod/chown/utimes anywhere outside, writes to existing files the uid does not
            own). Default: when this process is root on x86_64. Cost: while the rules exist,
            every process started on the host runs its syscalls through audit (measured here:
            +8% on a gcc compile, +9% on a /bin/true spawn).
        settle_budget: how long a report may wait for records still in the kernel queue
            (0: never ask, answer from what has arrived). Asking costs one AUDIT_GET round
            trip, which the kernel answers from a new kthread: 0.15-0.85 ms here.

    Raises:
        AuditUnavailable: ``audit_denials="on"`` and audit cannot work here (server start fails).
    """

    def __init__(
        self,
        audit_denials: str = "auto",
        *,
        landlock_abi: int,
        lock_path: str = DEFAULT_LOCK_PATH,
        uid_drop_rules: bool | None = None,
        settle_budget: float = SETTLE_BUDGET_S,
    ) -> None:
        if audit_denials not in AUDIT_MODES:
            raise ValueError(f"audit_denials must be one of {AUDIT_MODES}, not {audit_denials!r}")
        self._mode = audit_denials
        self._lock_path = lock_path
        self._settle_budget = settle_budget
        if uid_drop_rules is None:
            # A root server drops commands to an unprivileged uid; the rules are x86_64 only.
            uid_drop_rules = os.geteuid() == 0 and platform.machine() == "x86_64"
        self._uid_drop_rules = uid_drop_rules
        self._ledger = DenialLedger(os.getpid(), place=self._place)
        self._forks: ForkTracker | None = None
        self._readlog: AuditReadLog | None = None
        self._lease: AuditLease | None = None
        self._probe: AuditBacklogProbe | None = None
        self.unavailable_reason: str | None = None
        if audit_denials == "off":
            self.unavailable_reason = "disabled by --audit-denials off"
        elif landlock_abi < AUDIT_MIN_LANDLOCK_ABI:
            self.unavailable_reason = (
                f"Landlock ABI {landlock_abi} has no audit records (needs {AUDIT_MIN_LANDLOCK_ABI})"
            )
        if audit_denials == "on" and self.unavailable_reason is not None:
            raise AuditUnavailable(self.unavailable_reason)

    @property
    def source(self) -> str:
        """``"audit"`` or ``"heuristic"``: what decides denials for sandboxed processes.

        Before :meth:`run` has started this is what the monitor will try.
        """
        return SOURCE_HEURISTIC if self.unavailable_reason is not None else SOURCE_AUDIT

    @property
    def unattributed(self) -> int:
        """Audit records of ours that could not be mapped to a process (see module docs)."""
        return self._ledger.unattributed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Enable audit if configured, read records until cancelled, then restore the host.

        Raises:
            AuditUnavailable: ``audit_denials="on"`` and audit could not be set up.
        """
        if self.unavailable_reason is None:
            try:
                problem = permission_problem()
                if problem is not None:
                    raise AuditUnavailable(problem)
                # Join the group before enabling so that no record falls in between.
                self._readlog = AuditReadLog()
                self._probe = AuditBacklogProbe()
                try:
                    self._forks = ForkTracker(os.getpid())
                except OSError as exc:
                    log.info("no process connector (%s): placing tasks from /proc only", exc)
                self._lease = acquire_audit(self._lock_path, uid_drop_rules=self._uid_drop_rules)
            except AuditUnavailable as exc:
                self._close()
                if self._mode == "on":
                    raise
                self.unavailable_reason = str(exc)
                log.info("denials come from the stderr heuristic: %s", exc)
        task_status.started()
        try:
            if self._readlog is None:
                await trio.sleep_forever()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_records, self._readlog)
                if self._probe is not None:
                    nursery.start_soon(self._probe.run)
                if self._forks is not None:
                    nursery.start_soon(self._follow_forks, self._forks)
        finally:
            self._close()

    async def _follow_records(self, readlog: AuditReadLog) -> None:
        while True:
            await readlog.wait_readable()
            self._drain()

    async def _follow_forks(self, forks: ForkTracker) -> None:
        # Batched, not woken per event: a host forking thousands of times a second would
        # otherwise cost a wake-up each. The socket buffer holds far more than one interval.
        while True:
            await trio.sleep(FORK_DRAIN_INTERVAL_S)
            forks.read_available()

    def _drain(self) -> None:
        if self._readlog is None:
            return
        records = self._readlog.read_available()
        # After reading the records: every task they name was forked before they were
        # written, so its fork event is already queued (see _proctree).
        if self._forks is not None:
            self._forks.read_available()
        if records:
            self._ledger.feed(records)

    def _place(self, pid: int, server_pid: int) -> _Placement:
        if self._forks is not None:
            root = self._forks.root_of(pid)
            if root is not None:
                return _Placement(root=root, verified=True)
        return place_task(pid, server_pid)

    def _close(self) -> None:
        if self._readlog is not None:
            self._readlog.close()
            self._readlog = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._forks is not None:
            self._forks.close()
            self._forks = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    async def _settle(self) -> None:
        """Wait (bounded) until the kernel's audit queue is empty, so our records have arrived."""
        if self._probe is None or self._settle_budget <= 0:
            return
        with trio.move_on_after(self._settle_budget):
            while await self._probe.backlog():
                await trio.sleep(SETTLE_POLL_S)
                self._drain()

    async def report_denials(
        self,
        policy: SandboxPolicy | None,
        pid: int,
        exit_code: int,
        stdout_tail: bytes,
        stderr_tail: bytes,
        *,
        cwd: str | None = None,
        writable_roots: Sequence[str] = (),
        read_only_subpaths: Sequence[str] = (),
    ) -> DenialReport:
        """Say whether the reaped process ``pid`` (and its descendants) hit a sandbox denial.

        Call right after reaping. With audit this drains the records already delivered, waits
        at most :data:`SETTLE_BUDGET_S` for any still in the kernel queue, and forgets ``pid``.

        Args:
            policy: the policy it ran under; None or mode ``none`` means unsandboxed.
            pid: the launched (and now reaped) pid.
            exit_code: its exit status (the heuristic uses it).
            stdout_tail: unused by both sources today; kept so callers need not change.
            stderr_tail: the last bytes of its stderr (the heuristic reads it).
            cwd: its working directory (the heuristic resolves relative paths against it).
            writable_roots: every root it was allowed to write (the heuristic's "outside").
            read_only_subpaths: the carve-outs inside those roots (outside again).
        """
        del stdout_tail
        if policy is None or policy.mode is SandboxMode.NONE:
            return NOT_SANDBOXED
        guessed = guess_denials(
            policy,
            exit_code,
            stderr_tail,
            cwd=cwd,
            writable_roots=writable_roots,
            read_only=read_only_subpaths,
        )
        if self._readlog is None:
            return DenialReport(denied=bool(guessed), denials=guessed, source=SOURCE_HEURISTIC)
        self._drain()
        await self._settle()
        self._drain()
        denied, denials = self._ledger.take(pid)
        return DenialReport(denied=denied, denials=name_created(denials, guessed), source=SOURCE_AUDIT)


def name_created(denials: Sequence[Denial], guessed: Sequence[Denial]) -> tuple[Denial, ...]:
    """Complete audit targets that name only a directory with the path stderr names in it.

    A creation the read-only view refuses (``touch /etc/x``) fails before the new name is
    looked up, so the kernel's records name the parent (``/etc/``) only. The audit record
    stays the evidence (and the blocker); the command's own message only supplies the name.
    """
    named: list[Denial] = []
    for denial in denials:
        target = denial.target
        if target.endswith("/"):
            target = next(
                (
                    g.target
                    for g in guessed
                    if g.target.startswith(target) and "/" not in g.target[len(target) :]
                ),
                target,
            )
        named.append(Denial(blocker=denial.blocker, target=target))
    return tuple(named)
