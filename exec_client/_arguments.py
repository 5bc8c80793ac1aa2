"""The arguments of ``run``/``start`` turned into the wire's, checked before anything starts.

A str command runs through ``sh -c`` (a list is exec'd); stdin must be something the
client can send; a sandbox may be named, given as its wire dict or as a ``SandboxPolicy``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterable, Mapping, Sequence
from typing import Any, TypeAlias

import protocol as p

StdinSource: TypeAlias = "bytes | bytearray | memoryview | str | AsyncIterable[bytes | str] | Any"
Command: TypeAlias = "str | Sequence[str]"


def new_process_id() -> str:
    """A fresh processId: unique, and within the protocol's ``[A-Za-z0-9._:-]{1,128}``."""
    return f"exec-{os.urandom(16).hex()}"  # os.urandom: uuid costs ~15 ms to import


def command_argv(command: Command, shell: bool | None) -> tuple[str, ...]:
    """A str runs through ``sh -c`` (``shell=False`` with a str is a ``TypeError``); a list is exec'd.

    Raises:
        TypeError: a str with ``shell=False``, or a list holding something that is not a str.
    """
    if isinstance(command, str):
        if shell is False:
            raise TypeError("a str command runs through sh -c; pass a list of arguments with shell=False")
        return ("sh", "-c", command)
    if isinstance(command, bytes | bytearray) or not isinstance(command, Sequence):
        raise TypeError(f"command must be a str or a list of str, not {type(command).__name__}")
    argv = tuple(command)
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"every argument must be a str, not {type(arg).__name__}: {arg!r}")
    return ("sh", "-c", shlex.join(argv)) if shell else argv


def check_stdin(stdin: object) -> None:
    """Reject a stdin the client cannot send, before anything starts.

    Raises:
        TypeError: not bytes, str, a binary/text file object, or an async iterable.
    """
    if stdin is None or isinstance(stdin, bytes | bytearray | memoryview | str):
        return
    if callable(getattr(stdin, "read", None)) or hasattr(stdin, "__aiter__"):
        return
    raise TypeError(
        f"stdin must be bytes, str, a file object or an async iterable of bytes/str, not {type(stdin).__name__}"
    )


def sandbox_policy(sandbox: p.SandboxPolicy | Mapping[str, Any] | str | None) -> p.SandboxPolicy | None:
    if sandbox is None or isinstance(sandbox, p.SandboxPolicy):
        return sandbox
    if isinstance(sandbox, str):
        return p.SandboxPolicy(mode=p.SandboxMode(sandbox))
    try:
        return p.structure(dict(sandbox), p.SandboxPolicy)  # type: ignore[no-any-return]
    except p.ProtocolError as exc:
        raise ValueError(f"invalid sandbox policy: {exc.message}") from None


TerminalSizeArg: TypeAlias = "p.TerminalSize | tuple[int, int]"


def terminal_size(tty: bool, size: TerminalSizeArg | None) -> p.TerminalSize | None:
    """``size`` as the wire's ``TerminalSize`` (``(rows, cols)`` or a ``TerminalSize``).

    Raises:
        ValueError: a size without ``tty=True``, or rows/cols outside 1..MAX_TERMINAL_DIMENSION.
        TypeError: not a pair of ints.
    """
    if size is None:
        return None
    if not tty:
        raise ValueError("size is the window size of a pseudo-terminal: it needs tty=True")
    if isinstance(size, p.TerminalSize):
        return size
    if isinstance(size, str | bytes) or not isinstance(size, Sequence) or len(size) != 2:
        raise TypeError(f"size must be (rows, cols), not {size!r}")
    rows, cols = size
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (rows, cols)):
        raise TypeError(f"size must be (rows, cols) as ints, not {size!r}")
    if not (1 <= rows <= p.MAX_TERMINAL_DIMENSION and 1 <= cols <= p.MAX_TERMINAL_DIMENSION):
        raise ValueError(f"size {size!r}: rows and cols must be 1..{p.MAX_TERMINAL_DIMENSION}")
    return p.TerminalSize(rows=rows, cols=cols)


def check_failed(record: p.TerminalRecord) -> bool:
    return bool(record.failure is not None or record.exit_code != 0 or record.timed_out or record.sandbox_denied)
