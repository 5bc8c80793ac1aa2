"""The kernel audit interface: record parsing, the read-log multicast socket, and audit enable/restore.

Pure Python over ``AF_NETLINK``/``NETLINK_AUDIT``; no auditd, no libaudit. Three pieces:

- :func:`parse_record` turns one netlink audit message into an :class:`AuditRecord`
  (``type``, ``serial``, ``fields``), decoding the kernel's hex-encoded "untrusted" strings.
- :class:`AuditReadLog` is a socket bound to the ``AUDIT_NLGRP_READLOG`` multicast group: every
  record the kernel emits is copied to it, whether or not an audit daemon is registered.
- :class:`AuditControl` gets and sets the kernel's audit status, and :class:`AuditLease` enables
  audit for as long as at least one exec-server on the host needs it, then restores what the
  first of them found (see :func:`acquire_audit`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Final

import attrs
import trio

log = logging.getLogger(__name__)

NETLINK_AUDIT: Final = 9
AUDIT_NLGRP_READLOG: Final = 1

# Netlink message types (linux/netlink.h, linux/audit.h).
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
AUDIT_GET: Final = 1000
AUDIT_SET: Final = 1001
AUDIT_ADD_RULE: Final = 1011
AUDIT_DEL_RULE: Final = 1012

# Record types we act on (include/uapi/linux/audit.h).
AUDIT_SYSCALL: Final = 1300
AUDIT_PATH: Final = 1302
AUDIT_CWD: Final = 1307
AUDIT_EOE: Final = 1320
AUDIT_SECCOMP: Final = 1326
AUDIT_LANDLOCK_ACCESS: Final = 1423
AUDIT_LANDLOCK_DOMAIN: Final = 1424

_NLM_F_REQUEST: Final = 0x1
_NLM_F_ACK: Final = 0x4
_NLMSG_HEADER: Final = struct.Struct("=IHHII")

# struct audit_status: eleven u32 since Linux 5.9 (older kernels accept a prefix of it).
_STATUS: Final = struct.Struct("=11I")
_STATUS_ENABLED: Final = 0x1
_STATUS_BACKLOG_LIMIT: Final = 0x10

# Enough room for a burst of denials (a build that probes hundreds of paths) before kauditd
# drains the queue; past the limit the kernel drops Landlock records (they are allocated
# GFP_ATOMIC) and would make seccomp's GFP_KERNEL records wait up to backlog_wait_time.
WANTED_BACKLOG_LIMIT: Final = 8192

CONTROL_TIMEOUT_S: Final = 2.0
_RECV_BUFFER: Final = 1 << 16
# The read-log socket's kernel buffer: records that arrive while the trio task is busy wait
# here; on overflow the kernel drops them and recv raises ENOBUFS (counted, never fatal).
READLOG_RCVBUF: Final = 16 << 20
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)

# Keys whose values the kernel logs with audit_log_untrustedstring(): quoted when printable,
# otherwise hex-encoded without quotes.
_UNTRUSTED_KEYS: Final = frozenset({"path", "exe", "comm", "ocomm", "name", "proctitle", "cwd"})
_HEADER_RE: Final = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s?")
_FIELD_RE: Final = re.compile(r'([A-Za-z_][\w-]*)=("[^"]*"|\S*)')
_HEX_RE: Final = re.compile(r"(?:[0-9A-F]{2})+")

DEFAULT_LOCK_PATH: Final = "/run/exec-server/audit-state.json"

# ---- the syscall rules for denials that Landlock cannot see -----------------------------
#
# A sandboxed command sees the host through a read-only view (a mount namespace), with
# read-only carve-outs inside its writable roots and mode-000 placeholders over masked paths,
# and keeps the server's uid with no capability. The VFS refuses a write, chmod, chown,
# utimes, xattr change, rename, link or removal on a read-only mount with EROFS *before*
# Landlock's hooks run, and a root command without CAP_DAC_OVERRIDE gets EACCES/EPERM from
# plain permission checks (a masked file, another user's file): neither leaves a Landlock
# record, so we ask the kernel for a SYSCALL record when one of these calls fails that way.
# Records of processes that are not ours are dropped by the ledger.
RULE_KEY: Final = "exec-server-denial"
AUDIT_ARCH_X86_64: Final = 0xC000003E
_FILTER_EXIT: Final = 0x04
_ACTION_ALWAYS: Final = 2
_FIELD_UID: Final = 1
_FIELD_ARCH: Final = 11
_FIELD_EXIT: Final = 103
_FIELD_FILTERKEY: Final = 210
_OP_EQUAL: Final = 0x40000000
_RULE_HEAD: Final = struct.Struct("=3I")
# x86_64 numbers: metadata changes Landlock does not mediate.
METADATA_SYSCALLS: Final = {
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
    "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260,
    "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190,
    "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199,
}  # fmt: skip
# Calls that open a file: (number, index of the flags argument, or None for openat2).
OPEN_SYSCALLS: Final = {"open": (2, 1), "openat": (257, 2), "openat2": (437, None), "creat": (85, None)}
# Calls that change the tree of names.
TREE_SYSCALLS: Final = {
    "truncate": 76, "mkdir": 83, "mkdirat": 258, "rmdir": 84, "unlink": 87, "unlinkat": 263,
    "rename": 82, "renameat": 264, "renameat2": 316, "link": 86, "linkat": 265,
    "symlink": 88, "symlinkat": 266, "mknod": 133, "mknodat": 259,
}  # fmt: skip
# An exec the view refuses (a masked or a mode-000 file, for a root without capabilities).
EXEC_SYSCALLS: Final = {"execve": 59, "execveat": 322}
ROOT_UID: Final = 0


class AuditUnavailable(Exception):
    """Kernel audit cannot be used here; ``str(exc)`` says why."""


@attrs.frozen
class AuditRecord:
    """One audit record: ``type`` (e.g. 1423), the event ``serial`` and its ``key=value`` fields."""

    type: int
    serial: int
    timestamp: float
    fields: dict[str, str]


@attrs.frozen
class AuditStatus:
    """The kernel's ``struct audit_status`` (the fields we read or restore)."""

    enabled: int
    failure: int
    pid: int
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int


def decode_value(key: str, raw: str) -> str:
    """Return a field value without quotes, hex-decoding the kernel's untrusted-string form."""
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return raw[1:-1]
    if key in _UNTRUSTED_KEYS and _HEX_RE.fullmatch(raw):
        return bytes.fromhex(raw).decode("utf-8", errors="surrogateescape")
    return raw


def parse_fields(text: str) -> dict[str, str]:
    """Parse ``key=value key="quoted" key=48455820`` into a dict (first occurrence wins)."""
    fields: dict[str, str] = {}
    for match in _FIELD_RE.finditer(text):
        key, raw = match.group(1), match.group(2)
        fields.setdefault(key, decode_value(key, raw))
    return fields


def parse_record(record_type: int, payload: bytes) -> AuditRecord | None:
    """Parse one audit message body (``audit(SEC.MSEC:SERIAL): fields``); None if it has no header."""
    text = payload.rstrip(b"\0").decode("utf-8", errors="surrogateescape")
    header = _HEADER_RE.match(text)
    if header is None:
        return None
    seconds, millis, serial = header.groups()
    return AuditRecord(
        type=record_type,
        serial=int(serial),
        timestamp=int(seconds) + int(millis) / 1000,
        fields=parse_fields(text[header.end() :]),
    )


def iter_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Split a netlink datagram into ``(type, seq, payload)`` messages."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, msg_type, _flags, seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
        # The kernel's audit messages are sent with nlmsg_len covering the text; guard against
        # a truncated or bogus length instead of looping forever.
        if length < _NLMSG_HEADER.size:
            length = len(data) - offset
        end = min(offset + length, len(data))
        yield msg_type, seq, data[offset + _NLMSG_HEADER.size : end]
        offset += (length + 3) & ~3


class AuditReadLog:
    """A non-blocking socket on the audit read-log multicast group.

    Raises:
        AuditUnavailable: the group cannot be joined (no CAP_AUDIT_READ, or a user namespace).
    """

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as exc:
            raise AuditUnavailable(f"cannot open a NETLINK_AUDIT socket: {exc.strerror}") from exc
        try:
            try:
                # Past net.core.rmem_max: we have CAP_NET_ADMIN whenever we may read audit.
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, READLOG_RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READLOG_RCVBUF)
            sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except OSError as exc:
            sock.close()
            raise AuditUnavailable(
                f"cannot join the audit read-log multicast group: {exc.strerror}"
            ) from exc
        sock.setblocking(False)
        self._sock = sock
        self.overruns = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_available(self) -> list[AuditRecord]:
        """Return every record already queued on the socket, without blocking."""
        records: list[AuditRecord] = []
        while True:
            try:
                data = self._sock.recv(_RECV_BUFFER)
            except BlockingIOError:
                return records
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped records because our buffer was full: count it and go
                    # on; the socket stays usable. A denial in the lost batch goes unreported.
                    if not self.overruns:
                        log.warning("audit read-log overrun: some audit records were lost")
                    self.overruns += 1
                    continue
                raise
            for msg_type, _seq, payload in iter_messages(data):
                record = parse_record(msg_type, payload)
                if record is not None:
                    records.append(record)

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def close(self) -> None:
        self._sock.close()


class AuditControl:
    """Synchronous ``AUDIT_GET``/``AUDIT_SET`` over a private netlink socket.

    Raises:
        AuditUnavailable: the socket cannot be opened or the kernel refuses the request.
    """

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise AuditUnavailable(f"cannot open a NETLINK_AUDIT socket: {exc.strerror}") from exc
        self._sock.settimeout(CONTROL_TIMEOUT_S)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, msg_type: int, body: bytes) -> tuple[int, bytes]:
        self._seq += 1
        seq = self._seq
        header = _NLMSG_HEADER.pack(
            _NLMSG_HEADER.size + len(body), msg_type, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0
        )
        try:
            self._sock.sendto(header + body, (0, 0))
            while True:
                data = self._sock.recv(_RECV_BUFFER)
                for reply_type, reply_seq, payload in iter_messages(data):
                    if reply_seq != seq:
                        continue
                    if reply_type == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", payload)
                        if code != 0:
                            raise AuditUnavailable(
                                f"audit request {msg_type} refused: {os.strerror(-code)}"
                            )
                        if msg_type != AUDIT_GET:
                            return reply_type, payload
                        continue  # AUDIT_GET: the ack comes first, the status follows
                    return reply_type, payload
        except TimeoutError as exc:
            raise AuditUnavailable(f"audit request {msg_type} got no answer") from exc
        except OSError as exc:
            raise AuditUnavailable(f"audit request {msg_type} failed: {exc.strerror}") from exc

    def get_status(self) -> AuditStatus:
        """Return the kernel's audit status (``AUDIT_GET``)."""
        _type, payload = self._request(AUDIT_GET, b"")
        values = _STATUS.unpack_from(payload.ljust(_STATUS.size, b"\0"))
        _mask, enabled, failure, pid, rate_limit, backlog_limit, lost, backlog = values[:8]
        return AuditStatus(
            enabled=enabled,
            failure=failure,
            pid=pid,
            rate_limit=rate_limit,
            backlog_limit=backlog_limit,
            lost=lost,
            backlog=backlog,
        )

    def add_rule(self, rule: bytes) -> bool:
        """Add an audit rule; False if an identical rule already exists."""
        try:
            self._request(AUDIT_ADD_RULE, rule)
        except AuditUnavailable as exc:
            if "File exists" in str(exc):
                return False
            raise
        return True

    def delete_rule(self, rule: bytes) -> bool:
        """Delete an audit rule; False if there was no such rule."""
        try:
            self._request(AUDIT_DEL_RULE, rule)
        except AuditUnavailable as exc:
            if "No such file" in str(exc):
                return False
            raise
        return True

    def set_status(self, *, enabled: int | None = None, backlog_limit: int | None = None) -> None:
        """Change the audit enabled flag and/or backlog limit (``AUDIT_SET``)."""
        mask = 0
        if enabled is not None:
            mask |= _STATUS_ENABLED
        if backlog_limit is not None:
            mask |= _STATUS_BACKLOG_LIMIT
        if not mask:
            return
        body = _STATUS.pack(mask, enabled or 0, 0, 0, 0, backlog_limit or 0, 0, 0, 0, 0, 0)
        self._request(AUDIT_SET, body)


def build_rule(syscalls: Sequence[int], errno_value: int, *, uid: int | None = None) -> bytes:
    """Encode one ``struct audit_rule_data``: exit filter, always.

    Matches x86_64 calls among ``syscalls`` that fail with ``-errno_value`` (by the task
    with ``uid`` when given). Tagged with :data:`RULE_KEY` so that an administrator sees
    whose rule it is.
    """
    mask = [0] * 64
    for number in syscalls:
        mask[number // 32] |= 1 << (number % 32)
    key = RULE_KEY.encode()
    fields = [
        (_FIELD_ARCH, _OP_EQUAL, AUDIT_ARCH_X86_64),
        (_FIELD_EXIT, _OP_EQUAL, (-errno_value) & 0xFFFFFFFF),
    ]
    if uid is not None:
        fields.append((_FIELD_UID, _OP_EQUAL, uid))
    fields.append((_FIELD_FILTERKEY, _OP_EQUAL, len(key)))
    names = [0] * 64
    values = [0] * 64
    ops = [0] * 64
    for index, (name, op, value) in enumerate(fields):
        names[index], ops[index], values[index] = name, op, value
    return (
        _RULE_HEAD.pack(_FILTER_EXIT, _ACTION_ALWAYS, len(fields))
        + struct.pack("=64I", *mask)
        + struct.pack("=64I", *names)
        + struct.pack("=64I", *values)
        + struct.pack("=64I", *ops)
        + struct.pack("=I", len(key))
        + key
    )


def denial_rules() -> list[bytes]:
    """The syscall rules that report the view's and the capability drop's refusals.

    EROFS (the read-only view, the carve-outs) for any uid: nothing on a host writes to a
    read-only mount on purpose. EACCES/EPERM only for uid 0: a root process that has its
    capabilities meets them only when it is one of our commands (or another sandbox's).
    """
    every = [*METADATA_SYSCALLS.values(), *(n for n, _ in OPEN_SYSCALLS.values()), *TREE_SYSCALLS.values()]
    return [
        build_rule(every, errno.EROFS),
        build_rule([*every, *EXEC_SYSCALLS.values()], errno.EACCES, uid=ROOT_UID),
        build_rule(every, errno.EPERM, uid=ROOT_UID),
    ]


# The kernel answers AUDIT_GET at once; this only bounds a lost answer.
_BACKLOG_ANSWER_S: Final = 0.05


@attrs.define(eq=False)
class _Round:
    """One ``AUDIT_GET``, shared by every caller that joined it before it was sent."""

    answered: trio.Event = attrs.Factory(trio.Event)
    backlog: int | None = None


class AuditBacklogProbe:
    """Asks the kernel, without blocking trio, how many records still wait in its audit queue.

    When that backlog is 0, every record emitted so far has been handed to the read-log
    group, so a reaped process's records are already on our socket.

    Single flight: one question at a time, asked by :meth:`run`, and every :meth:`backlog`
    caller that arrives while a question is in flight shares the *next* one. Each answer costs
    the kernel a kthread (0.15-0.85 ms here), and concurrent exits used to queue behind each
    other for one round trip each.

    Why a shared answer is as exact as a private one: a caller joins ``_next``, the round whose
    question is not sent yet. :meth:`run` swaps ``_next`` for a fresh round and sends that
    round's question in one synchronous step (no checkpoint in between), so every caller of a
    round joined it -- and so was reaped, since callers ask only after the reap -- before its
    question left. A process's records are queued in its own context before it exits; the
    kernel counts the backlog when the question arrives, later still. So an answer of 0 means
    the same for every caller of the round as it would for a question of its own: each
    caller's records have been multicast. A caller never gets the answer of a question sent
    before it asked (that is the one in flight when it arrives).
    """

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise AuditUnavailable(f"cannot open a NETLINK_AUDIT socket: {exc.strerror}") from exc
        self._sock.setblocking(False)
        self._seq = 0
        self._next = _Round()
        self._wanted = trio.Event()  # set once ``_next`` has a caller

    async def backlog(self) -> int | None:
        """The kernel's audit backlog, from a question sent after this call began, or None if
        it could not be read (never raises). Needs :meth:`run` to be running."""
        joined = self._next
        self._wanted.set()
        await joined.answered.wait()
        return joined.backlog

    async def run(self) -> None:
        """Ask one round after another while callers wait; until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            asked, self._next = self._next, _Round()
            with trio.move_on_after(_BACKLOG_ANSWER_S):
                asked.backlog = await self._ask()  # sends before its first checkpoint
            asked.answered.set()

    async def _ask(self) -> int | None:
        self._seq += 1
        request = _NLMSG_HEADER.pack(_NLMSG_HEADER.size, AUDIT_GET, _NLM_F_REQUEST, self._seq, 0)
        try:
            self._sock.sendto(request, (0, 0))
            while True:
                await trio.lowlevel.wait_readable(self._sock)
                data = self._sock.recv(_RECV_BUFFER)
                for msg_type, seq, payload in iter_messages(data):
                    if msg_type == AUDIT_GET and seq == self._seq:
                        return int(_STATUS.unpack_from(payload.ljust(_STATUS.size, b"\0"))[7])
        except OSError:
            return None

    def close(self) -> None:
        self._sock.close()


def permission_problem() -> str | None:
    """Say why this process cannot control audit, or None if it looks permitted."""
    try:
        with open("/proc/self/uid_map") as uid_map:
            # Audit control is refused in any user namespace but the initial one, whose map is
            # the full identity range.
            if uid_map.read().split() != ["0", "0", "4294967295"]:
                return "running inside a user namespace (audit is refused there)"
        with open("/proc/self/status") as status:
            cap_eff = next(
                int(line.split()[1], 16) for line in status if line.startswith("CapEff:")
            )
    except (OSError, StopIteration, ValueError) as exc:
        return f"cannot read process credentials: {exc}"
    cap_audit_control, cap_audit_read = 30, 37
    if not cap_eff & (1 << cap_audit_control):
        return "missing CAP_AUDIT_CONTROL"
    if not cap_eff & (1 << cap_audit_read):
        return "missing CAP_AUDIT_READ"
    return None


@attrs.define
class AuditLease:
    """Audit enabled on behalf of this server; :meth:`release` restores the host when it is the last.

    Several exec-servers may run on one host. Each holds a shared ``flock`` on ``lock_path``;
    the file records the audit state the first of them found. A server that exits and can take
    the lock exclusively is the last user and restores that state; one that cannot leaves audit
    as it is for the others. A crashed server leaves the file behind, so the state it found is
    still restored by the last server that exits later.
    """

    control: AuditControl
    lock_path: str
    lock_file: int
    found: AuditStatus
    rules: bool = False
    released: bool = False

    def release(self) -> None:
        """Restore the saved audit state if no other exec-server still uses it. Idempotent."""
        if self.released:
            return
        self.released = True
        try:
            with _host_mutex(self.lock_path):
                fcntl.flock(self.lock_file, fcntl.LOCK_UN)
                try:
                    fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another exec-server still relies on audit being on
                saved = _read_saved(self.lock_file)
                if saved is not None:
                    try:
                        if saved["rules"]:
                            for rule in denial_rules():
                                self.control.delete_rule(rule)
                        self.control.set_status(
                            enabled=saved["enabled"], backlog_limit=saved["backlog_limit"]
                        )
                    except AuditUnavailable:
                        return  # keep the file so that a later server can still restore it
                    os.ftruncate(self.lock_file, 0)
        finally:
            os.close(self.lock_file)
            self.control.close()


@contextlib.contextmanager
def _host_mutex(lock_path: str) -> Iterator[None]:
    """Serialize audit setup and restore between exec-servers on this host.

    A POSIX record lock on a side file: it excludes other processes, and never blocks this
    one (several monitors in one process run their sync critical sections one at a time
    anyway, and a flock here would deadlock against our own lease).
    """
    fd = os.open(lock_path + ".mutex", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the record lock


def _read_saved(fd: int) -> dict[str, int] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        saved = json.loads(raw)
        return {
            "enabled": int(saved["enabled"]),
            "backlog_limit": int(saved["backlog_limit"]),
            "rules": int(saved.get("rules", 0)),
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_saved(fd: int, saved: dict[str, int]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(saved).encode())
    os.fsync(fd)


def acquire_audit(
    lock_path: str = DEFAULT_LOCK_PATH,
    *,
    uid_drop_rules: bool = False,
    control: AuditControl | None = None,
) -> AuditLease:
    """Make sure the kernel emits audit records, remembering what to restore.

    Enables audit and raises the backlog limit to :data:`WANTED_BACKLOG_LIMIT` if they are
    lower. Changes nothing when audit is already on (an auditd runs) or locked (``enabled=2``).
    With ``uid_drop_rules`` it also adds :func:`denial_rules` (removed by the last user);
    ``AuditLease.rules`` says whether they are in place. ``control`` is the kernel interface
    (one is opened by default); the lease owns and closes it.

    Raises:
        AuditUnavailable: not permitted here, or the kernel refused.
    """
    if control is None:
        problem = permission_problem()
        if problem is not None:
            raise AuditUnavailable(problem)
        control = AuditControl()
    try:
        os.makedirs(os.path.dirname(lock_path), mode=0o700, exist_ok=True)
        lock_file = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        control.close()
        raise AuditUnavailable(f"cannot open {lock_path}: {exc.strerror}") from exc
    try:
        with _host_mutex(lock_path):
            found, rules = _enable(control, lock_file, uid_drop_rules)
            # Cannot conflict: the exclusive lock is only ever taken under the mutex.
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BaseException:
        os.close(lock_file)
        control.close()
        raise
    return AuditLease(
        control=control, lock_path=lock_path, lock_file=lock_file, found=found, rules=rules
    )


def _enable(
    control: AuditControl, lock_file: int, uid_drop_rules: bool
) -> tuple[AuditStatus, bool]:
    """Enable audit, raise the backlog limit and add the rules as asked, saving what was found.

    Returns the status found and whether the uid-drop rules are in place.
    """
    found = control.get_status()
    if found.enabled == 2:
        # Locked by the administrator: audit is on and no setting or rule may change.
        return found, False
    saved = _read_saved(lock_file)
    if saved is None:
        # First user on this host: remember the state we are about to change.
        saved = {"enabled": found.enabled, "backlog_limit": found.backlog_limit, "rules": 0}
        _write_saved(lock_file, saved)
    wanted_enabled = 1 if found.enabled == 0 else None
    # An audit daemon's backlog is its administrator's setting; without one, ours.
    wanted_backlog = (
        WANTED_BACKLOG_LIMIT
        if found.pid == 0 and 0 < found.backlog_limit < WANTED_BACKLOG_LIMIT
        else None
    )
    control.set_status(enabled=wanted_enabled, backlog_limit=wanted_backlog)
    if not uid_drop_rules:
        return found, False
    if not saved["rules"]:
        # Written before adding: a crash in between still gets the rules removed later.
        _write_saved(lock_file, {**saved, "rules": 1})
    for rule in denial_rules():
        control.add_rule(rule)  # False: already there (another server added it)
    return found, True
