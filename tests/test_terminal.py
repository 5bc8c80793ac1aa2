"""``exec_client._terminal`` on a real local pseudo-terminal (``pty.openpty``): raw mode, the
exact restore on every way out of the block, the window size and SIGWINCH."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import termios
from collections.abc import Iterator

import pytest
import trio

from exec_client import IllegalTransition
from exec_client._terminal import RawTerminal, TerminalMode, raw_attributes, window_changes, window_size


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A fresh pty pair: (controller fd, terminal fd), in the kernel's default cooked mode."""
    controller, tty_fd = pty.openpty()
    try:
        yield controller, tty_fd
    finally:
        os.close(controller)
        os.close(tty_fd)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_raw_attributes_turn_off_what_would_eat_keys_or_touch_output(terminal: tuple[int, int]) -> None:
    _, fd = terminal
    cooked = termios.tcgetattr(fd)
    assert cooked[3] & termios.ISIG and cooked[3] & termios.ICANON  # the kernel's default is cooked
    raw = raw_attributes(cooked)
    iflag, oflag, cflag, lflag, _, _, cc = raw
    for flag in (termios.ICRNL, termios.IXON, termios.ISTRIP, termios.BRKINT, termios.INLCR):
        assert not iflag & flag
    assert not oflag & termios.OPOST
    for flag in (termios.ECHO, termios.ICANON, termios.ISIG, termios.IEXTEN):
        assert not lflag & flag
    assert cflag & termios.CSIZE == termios.CS8
    assert (cc[termios.VMIN], cc[termios.VTIME]) == (1, 0)
    assert termios.tcgetattr(fd) == cooked  # a pure function: the input list is untouched too


def test_raw_mode_on_the_terminal_and_the_exact_attributes_back(terminal: tuple[int, int]) -> None:
    controller, fd = terminal
    before = termios.tcgetattr(fd)
    with RawTerminal(fd) as raw:
        assert raw.mode is TerminalMode.RAW
        now = termios.tcgetattr(fd)
        assert not now[3] & (termios.ICANON | termios.ISIG | termios.ECHO)
        # Ctrl-C typed at a raw terminal is the byte 0x03 for the reader, not a SIGINT.
        os.write(controller, b"\x03\x1a\x1c")
        assert os.read(fd, 16) == b"\x03\x1a\x1c"
    assert raw.mode is TerminalMode.RESTORED
    assert termios.tcgetattr(fd) == before


def test_restored_when_the_block_raises(terminal: tuple[int, int]) -> None:
    _, fd = terminal
    before = termios.tcgetattr(fd)
    with pytest.raises(KeyboardInterrupt):
        with RawTerminal(fd):
            raise KeyboardInterrupt
    assert termios.tcgetattr(fd) == before


def test_restore_is_idempotent_and_a_terminal_is_used_once(terminal: tuple[int, int]) -> None:
    _, fd = terminal
    before = termios.tcgetattr(fd)
    raw = RawTerminal(fd)
    raw.enter_raw()
    raw.restore()
    # Someone changes the terminal afterwards: a second restore must not undo that.
    changed = termios.tcgetattr(fd)
    changed[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, changed)
    raw.restore()
    assert termios.tcgetattr(fd) == changed != before
    with pytest.raises(IllegalTransition, match="RESTORED -> RAW"):
        raw.enter_raw()


def test_restore_before_raw_changes_nothing(terminal: tuple[int, int]) -> None:
    _, fd = terminal
    before = termios.tcgetattr(fd)
    raw = RawTerminal(fd)
    raw.restore()
    assert (raw.mode, termios.tcgetattr(fd)) == (TerminalMode.RESTORED, before)


def test_raw_mode_of_a_pipe_is_an_os_error() -> None:
    read_end, write_end = os.pipe()
    try:
        raw = RawTerminal(read_end)
        with pytest.raises(OSError, match="cannot put fd .* in raw mode"):
            raw.enter_raw()
        assert raw.mode is TerminalMode.COOKED  # nothing was changed
    finally:
        os.close(read_end)
        os.close(write_end)


def test_window_size_of_a_terminal_and_of_something_else(terminal: tuple[int, int]) -> None:
    _, fd = terminal
    _set_size(fd, 37, 101)
    assert window_size(fd) == (37, 101)
    _set_size(fd, 0, 0)  # a terminal nobody sized
    assert window_size(fd) is None
    read_end, write_end = os.pipe()
    try:
        assert window_size(read_end) is None
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_sigwinch_yields_each_new_size_once(terminal: tuple[int, int]) -> None:
    _, fd = terminal
    _set_size(fd, 24, 80)
    with trio.fail_after(10):
        changes = window_changes(fd, (24, 80))
        try:
            _set_size(fd, 30, 100)
            # A change between reading the size and installing the handler is seen at once.
            assert await changes.__anext__() == (30, 100)
            _set_size(fd, 50, 132)
            os.kill(os.getpid(), signal.SIGWINCH)
            os.kill(os.getpid(), signal.SIGWINCH)  # two signals, one change: one size
            assert await changes.__anext__() == (50, 132)
            _set_size(fd, 10, 20)
            os.kill(os.getpid(), signal.SIGWINCH)
            assert await changes.__anext__() == (10, 20)
        finally:
            await changes.aclose()  # type: ignore[attr-defined]
