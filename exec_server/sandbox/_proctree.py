"""Who forked whom among this server's descendants, from the kernel's process connector.

An audit record names the task that was denied. A seccomp record (a refused ``socket()``)
names nothing else, and a short-lived grandchild is often gone — exited and reaped by its
shell — before the record is read, so ``/proc`` cannot say whose it was. The process
connector (``NETLINK_CONNECTOR``, ``CN_IDX_PROC``) reports every fork synchronously, from
inside ``fork()``, before the child can run: by the time any audit record of a task can be
read, the event that made that task is already on our socket. Draining it first gives the
parent chain of every descendant, alive or not.

Only fork and exit events are asked for (the kernel filters them since Linux 6.6; before, it
sends every event and we drop the rest). Only descendants of this process are kept, and an
exited task is forgotten :data:`EXITED_TTL_S` after its exit. Needs CAP_NET_ADMIN; without it
the caller falls back to ``/proc``.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import struct
import time
from typing import Final

import trio

log = logging.getLogger(__name__)

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
PROC_CN_MCAST_LISTEN: Final = 1
PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXIT: Final = 0x80000000

EXITED_TTL_S: Final = 5.0
MAX_TRACKED: Final = 65536
_MAX_DEPTH: Final = 128
RCVBUF: Final = 8 << 20
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)

_NLMSG: Final = struct.Struct("=IHHII")
_CN_MSG: Final = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEAD: Final = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK: Final = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_EXIT: Final = struct.Struct("=ii")  # process_pid, process_tgid
_NLMSG_DONE: Final = 3


def _kernel_filters_events() -> bool:
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 6)


class ForkTracker:
    """The parent of every descendant of ``ancestor`` forked since this tracker started.

    Raises:
        OSError: the connector cannot be joined (no CAP_NET_ADMIN, no CONFIG_PROC_EVENTS).
    """

    def __init__(self, ancestor: int) -> None:
        self._ancestor = ancestor
        self._parents: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._exited: collections.deque[tuple[float, int]] = collections.deque()
        self.overruns = 0
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, CN_IDX_PROC))  # port id 0: the kernel picks one (several per process)
            if _kernel_filters_events():
                # struct proc_input: the op, then the events we want.
                payload = struct.pack("=II", PROC_CN_MCAST_LISTEN, PROC_EVENT_FORK | PROC_EVENT_EXIT)
            else:
                payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            body = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
            sock.send(_NLMSG.pack(_NLMSG.size + len(body), _NLMSG_DONE, 0, 0, 0) + body)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ForkTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read_available(self) -> None:
        """Apply every fork/exit event already queued, without blocking."""
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                if not self.overruns:
                    log.warning("process connector overrun: some fork events were lost")
                self.overruns += 1
                continue
            self._apply(data)
        self._forget_exited()

    def _apply(self, data: bytes) -> None:
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length = _NLMSG.unpack_from(data, offset)[0]
            event = offset + _NLMSG.size + _CN_MSG.size
            if length < _NLMSG.size or event + _EVENT_HEAD.size > len(data):
                return
            what = _EVENT_HEAD.unpack_from(data, event)[0]
            payload = event + _EVENT_HEAD.size
            if what == PROC_EVENT_FORK:
                _parent_pid, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(data, payload)
                # A new thread is not a new process; only processes make a tree.
                if child_pid == child_tgid:
                    if parent_tgid == self._ancestor or parent_tgid in self._parents:
                        self._parents[child_tgid] = parent_tgid
                        self._parents.move_to_end(child_tgid)
                        while len(self._parents) > MAX_TRACKED:
                            self._parents.popitem(last=False)
                    else:
                        # The pid was reused outside our tree: drop what we knew of it.
                        self._parents.pop(child_tgid, None)
            elif what == PROC_EVENT_EXIT:
                pid, tgid = _EXIT.unpack_from(data, payload)
                if pid == tgid and tgid in self._parents:
                    self._exited.append((time.monotonic(), tgid))
            offset += (length + 3) & ~3

    def _forget_exited(self) -> None:
        horizon = time.monotonic() - EXITED_TTL_S
        while self._exited and self._exited[0][0] < horizon:
            _, pid = self._exited.popleft()
            # Its children keep their own entries: the chain is only walked upward.
            self._parents.pop(pid, None)

    def root_of(self, pid: int) -> int | None:
        """The child of ``ancestor`` that ``pid`` descends from (itself if it is one), or None."""
        current = pid
        for _ in range(_MAX_DEPTH):
            parent = self._parents.get(current)
            if parent is None:
                return None
            if parent == self._ancestor:
                return current
            current = parent
        return None
