"""Guess sandbox denials from a command's stderr, for hosts where kernel audit is unavailable.

The reference system matched keywords ("permission denied", "sandbox", "read-only file system")
anywhere in the output and misfired both ways. This guess is narrower and says so:

- A command that exited 0 was not denied (a swallowed denial is a miss we accept).
- Only stderr is read, line by line; stdout is the program's data, not its diagnostics.
- A filesystem denial needs an errno message *tied to a path* on the same line, in the shapes
  that libc's ``perror``/``strerror`` users print (``touch: cannot touch '/etc/x': Permission
  denied``, ``sh: 1: cannot create /etc/x: Permission denied``, ``PermissionError: [Errno 13]
  Permission denied: '/etc/x'``) — and that path must lie outside the writable roots. A bare
  "permission denied" sentence, or a path that merely contains the word "sandbox", is not one.
- A network denial is only considered when the policy has the network off, and needs a
  connection-level error (unreachable network, failed resolution, a socket call refused).
- The word "sandbox" is never evidence.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Sequence
from typing import Final

from protocol import Denial, SandboxMode, SandboxPolicy

MAX_DENIALS: Final = 8
# Only the end of stderr matters and regexes over megabytes would cost real time.
_SCAN_BYTES: Final = 16 * 1024

# errno strings glibc/musl print for the errors Landlock, a read-only mount or a dropped uid
# produce. Landlock answers EACCES for filesystem rights and EXDEV for a forbidden rename.
_FS_ERRNO: Final = r"(?:Permission denied|Operation not permitted|Read-only file system)"
_QUOTED: Final = r"""['"‘`]([^'"’`\n]+)['"’`]"""

# Each pattern captures the path; all require the errno text on the same line.
_FS_PATTERNS: Final = (
    # coreutils & friends: "touch: cannot touch '/etc/x': Permission denied"
    re.compile(_QUOTED + r":\s*" + _FS_ERRNO),
    # Python: "PermissionError: [Errno 13] Permission denied: '/etc/x'"
    re.compile(r"\[Errno (?:1|13|30)\] " + _FS_ERRNO + r":\s*" + _QUOTED),
    # dash/bash/ld/perror: "sh: 1: cannot create /etc/x: Permission denied", "bash: /etc/x: ..."
    re.compile(r"(?:^|[\s:])((?:/|\./|\.\./|~/)[^\s:'\"]*):\s*" + _FS_ERRNO),
)

_NET_PATTERNS: Final = (
    re.compile(r"Network is unreachable"),
    re.compile(r"Could not resolve host"),
    re.compile(r"Temporary failure in name resolution"),
    re.compile(r"Couldn't connect to server"),
    re.compile(r"Failed to connect to \S+ port \d+"),
    re.compile(r"(?:Address family not supported by protocol|Cannot assign requested address)"),
    # A socket call refused by the seccomp filter: errno text that names no path (Python's
    # "PermissionError: [Errno 13] Permission denied", urllib's "<urlopen error [Errno 13] …>").
    re.compile(r"\[Errno (?:1|13|97|101)\] [A-Z][a-z ]+(?:>|$)"),
    re.compile(r"\bsocket\b.*" + _FS_ERRNO, re.IGNORECASE),
)


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def guess_denials(
    policy: SandboxPolicy,
    exit_code: int,
    stderr_tail: bytes,
    *,
    cwd: str | None = None,
    writable_roots: Sequence[str] = (),
    read_only: Sequence[str] = (),
) -> tuple[Denial, ...]:
    """Return the denials a sandboxed command's stderr suggests; empty when there is no evidence.

    Args:
        policy: the policy the command ran under (``network`` decides whether network errors
            count; mode ``none`` never yields a denial).
        exit_code: the command's exit status; 0 means not denied.
        stderr_tail: the last bytes of its stderr.
        cwd: the command's working directory, to resolve relative paths.
        writable_roots: every root the policy let it write (cwd, writableRoots, its temp dir).
        read_only: the read-only carve-outs inside those roots (``.git``…): outside again.

    Returns:
        Up to :data:`MAX_DENIALS` denials with blocker ``"fs"`` (target: the path) or ``"net"``
        (target: the stderr line), in the order they appear.
    """
    if policy.mode is SandboxMode.NONE or exit_code == 0:
        return ()
    text = stderr_tail[-_SCAN_BYTES:].decode("utf-8", errors="replace")
    roots = [os.path.normpath(root) for root in writable_roots]
    carve_outs = [os.path.normpath(path) for path in read_only]
    denials: list[Denial] = []
    for line in text.splitlines():
        found = _fs_denial(line, cwd, roots, carve_outs)
        if found is None and not policy.network:
            found = _net_denial(line)
        if found is not None and found not in denials:
            denials.append(found)
            if len(denials) == MAX_DENIALS:
                break
    return tuple(denials)


def _fs_denial(line: str, cwd: str | None, roots: Sequence[str], carve_outs: Sequence[str]) -> Denial | None:
    for pattern in _FS_PATTERNS:
        for match in pattern.finditer(line):
            path = match.group(1)
            if path.startswith("~"):
                continue  # the shell expands ~, so a literal one is only text
            if not os.path.isabs(path):
                if cwd is None:
                    continue
                path = os.path.join(cwd, path)
            path = os.path.normpath(path)
            if not _inside(path, roots) or _inside(path, carve_outs):
                return Denial(blocker="fs", target=path)
    return None


def _net_denial(line: str) -> Denial | None:
    for pattern in _NET_PATTERNS:
        if pattern.search(line):
            return Denial(blocker="net", target=line.strip()[:200])
    return None
