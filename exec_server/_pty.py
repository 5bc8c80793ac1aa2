"""The server's end of a ``tty: true`` command's pseudo-terminal.

Who allocates it, and why: the sandbox launcher (``sandbox/launcher.c``, ``--pty-fd``), in
the command's own process just before the exec: inside the view for a sandboxed command, so
the pty belongs to the view's own devpts instance (``tty`` shows ``/dev/pts/0``; no host pty
is reachable), and on the host's devpts for an unsandboxed one (the launcher then runs with
``--limits-only`` or as the init of a PID namespace). The same code path either way: a
server-side ``os.openpty`` could not make the pty the command's controlling terminal without
a ``preexec_fn`` (which costs CPython's vfork path). The command becomes the leader of a
new session whose controlling terminal is the pty, with the slave as stdin, stdout and
stderr; the launcher sends the master over a unix socketpair (SCM_RIGHTS) and the server
reads and writes it.

What the server does with the master:

- output: reading it yields what the terminal shows (stdout and stderr merged, through the
  line discipline: ``\\n`` becomes ``\\r\\n`` unless the command sets ``stty raw`` or
  ``-opost``, input is echoed unless ``-echo``); EIO means no process holds the slave any
  more, which is the process's "closed";
- input: ``process/write`` writes to it like typing (``\\x03`` is a Ctrl-C when ``isig`` is
  on); ``eof`` sends the terminal's VEOF character (usually ``^D``) at the start of a line,
  see :meth:`Terminal.eof_bytes`;
- ``process/resize``: TIOCSWINSZ, and the kernel sends SIGWINCH to the foreground group;
- ``process/signal interrupt``: SIGINT to the terminal's foreground process group
  (``tcgetpgrp``), which is what Ctrl-C reaches.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
from typing import Final

import trio

from protocol import TerminalSize

# Codex's default (codex-utils-pty) and the classic VT100's.
DEFAULT_SIZE: Final = TerminalSize(rows=24, cols=80)
_WINSIZE: Final = struct.Struct("HHHH")
_TIOCGSID: Final = 0x5429  # not in Python's termios module
_LINE_ENDS: Final = frozenset(b"\r\n")


class TerminalChannel:
    """The socketpair over which the launcher hands the master back (one message, one fd).

    ``launcher_fd`` goes to the launcher (``pass_fds``) and is closed here right after the
    spawn, so that a launcher that dies before sending makes :meth:`receive` see end of file.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._socket: socket.socket | None = ours
        self._theirs: socket.socket | None = theirs

    @property
    def launcher_fd(self) -> int:
        assert self._theirs is not None, "the launcher's end was already handed over"
        return self._theirs.fileno()

    def launched(self) -> None:
        """The launcher has its copy: drop ours."""
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None

    async def receive(self) -> int | None:
        """The master fd (non-blocking), or None if the launcher ended without sending one
        (a setup failure: its message is on the diagnostics pipe)."""
        sock = self._socket
        assert sock is not None, "receive after close"
        while True:
            try:
                _data, fds, _flags, _address = socket.recv_fds(sock, 1, 1)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            break
        self.close()
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            return None
        os.set_blocking(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self.launched()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Terminal:
    """The master of one command's pseudo-terminal (owned by its ``ManagedProcess``)."""

    def __init__(self, master_fd: int) -> None:
        self.fd = master_fd
        # Whether the last byte written was a line end (or nothing was written): VEOF then
        # ends the input at once; after a partial line it first hands that line over.
        self._at_line_start = True

    def resize(self, size: TerminalSize) -> None:
        """TIOCSWINSZ: the kernel sends SIGWINCH to the foreground process group (a no-op
        once closed)."""
        if self.fd < 0:
            return
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, _WINSIZE.pack(size.rows, size.cols, 0, 0))

    def foreground_group(self) -> int | None:
        """The terminal's foreground process group (our pid namespace), None when there is
        none (the session leader is gone). Never 0: ``killpg(0)`` would signal the server."""
        if self.fd < 0:
            return None
        try:
            pgid = os.tcgetpgrp(self.fd)
        except OSError:
            return None
        return pgid if pgid > 0 else None

    def session(self) -> int | None:
        """The terminal's session id: the command's pid, which is also its process group."""
        if self.fd < 0:
            return None
        try:
            raw = fcntl.ioctl(self.fd, _TIOCGSID, bytes(4))
        except OSError:
            return None
        sid = int.from_bytes(raw, "little", signed=True)
        return sid if sid > 0 else None

    def wrote(self, data: bytes) -> None:
        """Record what was typed (for :meth:`eof_bytes`)."""
        if data:
            self._at_line_start = data[-1] in _LINE_ENDS

    def eof_bytes(self) -> bytes:
        """What ``eof: true`` types: VEOF, twice after a partial line (then the line is empty).

        In canonical mode (``icanon``, the default) VEOF at the start of a line makes the
        reader's ``read`` return 0 (end of file: ``cat`` ends, a shell exits); after a
        partial line it only hands that line over, so a second one follows. In raw mode
        it is just a byte (usually ``\\x04``) for the program to interpret.
        """
        try:
            veof = termios.tcgetattr(self.fd)[6][termios.VEOF]
        except termios.error:
            veof = b"\x04"
        char = veof if isinstance(veof, bytes) else bytes([veof])
        typed = char if self._at_line_start else char * 2
        self._at_line_start = True
        return typed

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            trio.lowlevel.notify_closing(fd)
            try:
                os.close(fd)
            except OSError:
                pass


def is_hangup(err: OSError) -> bool:
    """EIO from reading a master: every holder of the slave is gone."""
    return err.errno == errno.EIO
