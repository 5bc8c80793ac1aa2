"""The stderr heuristic (used where kernel audit is unavailable): its hits and the reference
system's misfires it must avoid. The stderr lines are what the real programs printed here under
the real sandbox (Debian dash, GNU coreutils, CPython 3.11, curl 7.88)."""

from __future__ import annotations

import pytest

from exec_server.sandbox._heuristic import MAX_DENIALS, guess_denials
from protocol import Denial, SandboxMode, SandboxPolicy

WORKSPACE = "/home/dev/project"
TMP = "/tmp/exec-sandbox-abc123"
WRITE = SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE)
WRITE_NET = SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE, network=True)
READ_ONLY = SandboxPolicy(mode=SandboxMode.READ_ONLY)


def guess(stderr: bytes, exit_code: int = 1, policy: SandboxPolicy = WRITE) -> tuple[Denial, ...]:
    roots = (WORKSPACE, TMP) if policy.mode is SandboxMode.WORKSPACE_WRITE else ()
    return guess_denials(policy, exit_code, stderr, cwd=WORKSPACE, writable_roots=roots)


@pytest.mark.parametrize(
    ("stderr", "path"),
    [
        (b"sh: 1: cannot create /etc/x: Permission denied\n", "/etc/x"),  # dash redirect, exit 2
        (b"bash: line 1: /etc/x: Permission denied\n", "/etc/x"),
        (b"touch: cannot touch '/etc/y': Permission denied\n", "/etc/y"),
        ("mkdir: cannot create directory ‘/etc/z’: Permission denied\n".encode(), "/etc/z"),
        (b"cp: cannot create regular file '/etc/h2': Permission denied\n", "/etc/h2"),
        (b"ln: failed to create symbolic link '/etc/l': Permission denied\n", "/etc/l"),
        (b"rm: cannot remove '/etc/hostname': Permission denied\n", "/etc/hostname"),
        (b"chmod: changing permissions of '/etc/hostname': Operation not permitted\n", "/etc/hostname"),
        (b"chown: changing ownership of '/etc/hostname': Operation not permitted\n", "/etc/hostname"),
        (
            b"Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
            b"PermissionError: [Errno 13] Permission denied: '/etc/x'\n",
            "/etc/x",
        ),
        (b"OSError: [Errno 30] Read-only file system: '/mnt/ro/f'\n", "/mnt/ro/f"),
        (b"/usr/bin/ld: cannot open output file /opt/a.out: Permission denied\n", "/opt/a.out"),
        (b"sh: 1: cannot create ../outside.txt: Permission denied\n", "/home/dev/outside.txt"),
    ],
)
def test_filesystem_denials_tied_to_a_path_outside_the_writable_roots(stderr: bytes, path: str) -> None:
    assert guess(stderr, exit_code=2) == (Denial(blocker="fs", target=path),)


@pytest.mark.parametrize(
    "stderr",
    [
        # a path inside the workspace or its temp dir: file permissions, not the sandbox
        b"touch: cannot touch '/home/dev/project/locked': Permission denied\n",
        b"sh: 1: cannot create ./build/out: Permission denied\n",
        b"sh: 1: cannot create /tmp/exec-sandbox-abc123/t: Permission denied\n",
    ],
)
def test_denials_inside_writable_roots_are_not_sandbox_denials(stderr: bytes) -> None:
    assert guess(stderr) == ()


def test_read_only_mode_counts_the_cwd_too() -> None:
    stderr = b"sh: 1: cannot create ./out: Permission denied\n"
    assert guess(stderr, policy=READ_ONLY) == (Denial(blocker="fs", target="/home/dev/project/out"),)


@pytest.mark.parametrize(
    ("name", "stderr", "exit_code"),
    [
        ("bash -c false", b"", 1),
        ("sh -c 'exit 2'", b"", 2),
        ("a bare 'permission denied' sentence", b"error: permission denied\n", 1),
        ("the word sandbox", b"sandbox: step failed (sandbox violation?)\n", 1),
        (
            "a path containing 'sandbox'",
            b"ls: cannot access '/home/dev/sandbox/missing': No such file or directory\n",
            2,
        ),
        ("ls of a missing path", b"ls: cannot access '/missing': No such file or directory\n", 2),
        ("Read-only file system without a path", b"warning: cache on a Read-only file system\n", 1),
        ("exit 0 despite a denial message", b"sh: 1: cannot create /etc/x: Permission denied\n", 0),
        ("a tilde path (shell text, not a path)", b"~/x: Permission denied\n", 1),
    ],
)
def test_the_reference_misfires_are_not_denials(name: str, stderr: bytes, exit_code: int) -> None:
    assert guess(stderr, exit_code=exit_code) == (), name


@pytest.mark.parametrize(
    "stderr",
    [
        b"curl: (7) Failed to connect to 127.0.0.1 port 8080 after 0 ms: Couldn't connect to server\n",
        b"curl: (6) Could not resolve host: example.com\n",
        b"urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>\n",
        b"urllib.error.URLError: <urlopen error [Errno 13] Permission denied>\n",
        b"PermissionError: [Errno 13] Permission denied\n",  # socket() refused by seccomp
        b"OSError: [Errno 101] Network is unreachable\n",
        b"ssh: connect to host example.com port 22: Network is unreachable\n",
    ],
)
def test_network_errors_count_only_when_the_network_is_off(stderr: bytes) -> None:
    (denial,) = guess(stderr)
    assert denial.blocker == "net"
    assert guess(stderr, policy=WRITE_NET) == ()  # curl to a closed port with network allowed


def test_denials_are_capped_and_deduplicated() -> None:
    lines = b"".join(f"touch: cannot touch '/etc/f{i}': Permission denied\n".encode() for i in range(20))
    denials = guess(lines + lines)
    assert len(denials) == MAX_DENIALS
    assert denials[0] == Denial(blocker="fs", target="/etc/f0")


def test_unsandboxed_is_never_denied() -> None:
    stderr = b"touch: cannot touch '/etc/y': Permission denied\n"
    assert guess_denials(SandboxPolicy(mode=SandboxMode.NONE), 1, stderr) == ()


def test_binary_garbage_does_not_break_it() -> None:
    assert guess(bytes(range(256)) * 100) == ()
