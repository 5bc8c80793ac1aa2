"""The local terminal of ``exec-client run -t``: raw mode, its restore, and the window size.

Like ``ssh -t``, the CLI hands the whole keyboard to the remote program: the local
terminal goes into raw mode (no line editing, no echo, no signal keys, no output
processing), so Ctrl-C, Ctrl-Z and Ctrl-\\ arrive at the remote pseudo-terminal as the bytes
0x03, 0x1a and 0x1c and its line discipline turns them into signals for the remote
foreground process group; the remote pty already turns "\\n" into "\\r\\n", so our output
is written untouched. Whatever happens — the command exits, an exception, a lost
connection, SIGTERM or SIGHUP to the CLI — the terminal is put back exactly as it was
found (the saved ``termios`` attributes), once.

``RawTerminal`` is that one object, with a state enum and one transition table like every
lifecycle in this package; ``window_size`` reads the size that ``process/start`` carries
and ``window_changes`` turns SIGWINCH into new sizes for ``process/resize``.
"""

from __future__ import annotations

import enum
import os
import signal
import termios
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final

import anyio

from ._lifecycle import Lifecycle

# termios.tcgetattr's list: iflag, oflag, cflag, lflag, ispeed, ospeed, cc.
_IFLAG: Final = 0
_OFLAG: Final = 1
_CFLAG: Final = 2
_LFLAG: Final = 3
_CC: Final = 6

# termios.tcgetattr's list (typeshed: list[Any]).
TerminalAttributes = list[Any]


class TerminalMode(enum.Enum):
    """Where a ``RawTerminal`` stands."""

    COOKED = "cooked"  # as we found it; nothing changed yet
    RAW = "raw"  # raw mode; the attributes we found are saved
    RESTORED = "restored"  # put back as found (terminal: a RawTerminal is used once)


_M = TerminalMode
_TRANSITIONS: Final = {
    _M.COOKED: frozenset({_M.RAW, _M.RESTORED}),
    _M.RAW: frozenset({_M.RESTORED}),
    _M.RESTORED: frozenset[TerminalMode](),
}


def raw_attributes(attributes: TerminalAttributes) -> TerminalAttributes:
    """``attributes`` in raw mode (what ``cfmakeraw(3)`` and ssh's ``enter_raw_mode`` do).

    Input: no CR/NL translation, no XON/XOFF flow control (Ctrl-S/Ctrl-Q reach the remote
    program), no parity stripping, no BREAK signal. Local: no echo, no canonical lines, no
    signal keys (ISIG: Ctrl-C is a byte), no extended keys. Output: untouched (no OPOST).
    One byte at a time (VMIN 1, VTIME 0).
    """
    raw: TerminalAttributes = [list(value) if isinstance(value, list) else value for value in attributes]
    iflag: int = raw[_IFLAG]
    oflag: int = raw[_OFLAG]
    cflag: int = raw[_CFLAG]
    lflag: int = raw[_LFLAG]
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR | termios.IGNCR
        | termios.ICRNL | termios.IXON | termios.IXANY | termios.IXOFF
    )
    oflag &= ~termios.OPOST
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    raw[_IFLAG], raw[_OFLAG], raw[_CFLAG], raw[_LFLAG] = iflag, oflag, cflag, lflag
    cc = raw[_CC]
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return raw


class RawTerminal:
    """The terminal on ``fd`` in raw mode for the life of a ``with`` block.

    ``__enter__`` saves the attributes and switches to raw mode; ``restore()`` (also on
    ``__exit__``, whatever ended the block) puts the saved attributes back, waiting until
    our output has been written (TCSADRAIN) and keeping any typed-ahead input. It is
    idempotent, so an error path and the normal path may both call it.

    Raises (on enter):
        OSError: ``fd`` is not a terminal.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: TerminalAttributes | None = None
        self._lifecycle = Lifecycle(f"terminal on fd {fd}", TerminalMode.COOKED, _TRANSITIONS)

    @property
    def mode(self) -> TerminalMode:
        return self._lifecycle.state

    def enter_raw(self) -> None:
        """Save the attributes and switch to raw mode (``termios.error`` becomes an ``OSError``)."""
        try:
            saved = termios.tcgetattr(self.fd)
            # RAW before the change, so that whatever interrupts it finds something to restore.
            self._saved = saved
            self._lifecycle.move(TerminalMode.RAW)
            termios.tcsetattr(self.fd, termios.TCSADRAIN, raw_attributes(saved))
        except termios.error as exc:
            if self.mode is TerminalMode.RAW:
                self._lifecycle.move(TerminalMode.RESTORED)
            errno, message = exc.args if len(exc.args) == 2 else (None, str(exc))
            raise OSError(errno, f"cannot put fd {self.fd} in raw mode: {message}") from None

    def restore(self) -> None:
        """Put back the attributes found at ``enter_raw`` (once; later calls do nothing)."""
        if self.mode is not TerminalMode.RAW:
            if self.mode is TerminalMode.COOKED:
                self._lifecycle.move(TerminalMode.RESTORED)
            return
        self._lifecycle.move(TerminalMode.RESTORED)
        assert self._saved is not None
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        except termios.error:
            pass  # the terminal went away (SIGHUP): nothing left to restore

    def __enter__(self) -> RawTerminal:
        self.enter_raw()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def window_size(fd: int) -> tuple[int, int] | None:
    """``(rows, cols)`` of the terminal on ``fd``, or ``None`` (not a terminal, or size 0)."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    if size.lines <= 0 or size.columns <= 0:
        return None
    return size.lines, size.columns


async def window_changes(fd: int, current: tuple[int, int] | None) -> AsyncIterator[tuple[int, int]]:
    """Each new ``(rows, cols)`` of the terminal on ``fd``, from SIGWINCH, for ever.

    ``current`` is the size already sent: a change between reading it and installing the
    signal handler is caught by one look right after installing it. Sizes equal to the
    last one yielded (several SIGWINCHes for one drag) are skipped.
    """
    with anyio.open_signal_receiver(signal.SIGWINCH) as received:
        last = current
        size = window_size(fd)
        if size is not None and size != last:
            last = size
            yield size
        async for _ in received:
            size = window_size(fd)
            if size is not None and size != last:
                last = size
                yield size
