"""The sandbox-denial corpus: real commands, through the real server, over a real WebSocket.

Each case runs under a real Landlock/seccomp/netns sandbox on two servers: one that decides
``sandboxDenied`` from kernel audit records, one with ``--audit-denials off`` (the stderr
heuristic). Asserted: with audit available, ``sandboxDenied`` is right in every case; every
denied action really was blocked (the file is absent or unchanged, no connection or datagram
reached the test's listeners); allowed actions did their work. The heuristic's column is
printed next to the audit column, and its misses are reported, not asserted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from exec_client import Client, TerminalRecord, open_client
from exec_server import Server, ServerConfig, serve_websocket
from exec_server.sandbox import Sandbox, SandboxSettings
from protocol import SandboxMode


NOBODY = 65534
WORKSPACE_WRITE = {"mode": "workspaceWrite"}
READ_ONLY = {"mode": "readOnly"}
WITH_NETWORK = {"mode": "workspaceWrite", "network": True}


@attrs.frozen
class Places:
    """What the cases write to and connect to, outside and inside the sandbox."""

    workspace: Path  # owned by the server's uid (root's own, when the tests run as root)
    outside: Path  # mode 0777: only the sandbox (not file permissions) can refuse a write there
    tcp: socket.socket  # a loopback listener the commands must not reach (network off)
    udp: socket.socket  # a loopback UDP socket no datagram must reach (network off)

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.getsockname()[1])

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])


Check = Callable[[Places, TerminalRecord], str | None]  # an error message, or None if fine


@attrs.frozen
class Case:
    name: str
    argv: Callable[[Places], list[str]]
    denied: bool
    sandbox: dict[str, Any] = WORKSPACE_WRITE
    check: Check | None = None  # "really blocked" / "really worked"


def absent(template: str) -> Check:
    def check(places: Places, record: TerminalRecord) -> str | None:
        path = template.format(outside=places.outside, workspace=places.workspace)
        return f"{path} exists: the write was not blocked" if os.path.lexists(path) else None

    return check


def unchanged(template: str) -> Check:
    def check(places: Places, record: TerminalRecord) -> str | None:
        path = Path(template.format(outside=places.outside))
        info = path.stat()
        if (stat.S_IMODE(info.st_mode), info.st_uid, path.read_bytes()) != (0o666, 0, b"original\n"):
            return f"{path} changed: mode {oct(info.st_mode)}, uid {info.st_uid}"
        return None

    return check


def no_tcp_connection(places: Places, record: TerminalRecord) -> str | None:
    try:
        connection, _ = places.tcp.accept()
    except BlockingIOError:
        return None
    connection.close()
    return "a connection reached the loopback listener"


def tcp_connection(places: Places, record: TerminalRecord) -> str | None:
    if no_tcp_connection(places, record) is None:
        return "the allowed connection never reached the listener"
    return None


def no_datagram(places: Places, record: TerminalRecord) -> str | None:
    try:
        places.udp.recvfrom(64)
    except BlockingIOError:
        return None
    return "a datagram reached the UDP socket"


def succeeded(output: bytes) -> Check:
    def check(places: Places, record: TerminalRecord) -> str | None:
        if record.exit_code != 0 or output not in record.stdout:
            return f"allowed action failed: exit {record.exit_code}, stderr {record.stderr[-200:]!r}"
        return None

    return check


def py(code: str) -> list[str]:
    return ["python3", "-c", code]


CASES: tuple[Case, ...] = (
    # ---- denied ------------------------------------------------------------------------
    Case(
        "touch outside workspace",
        lambda p: ["touch", f"{p.outside}/touched"],
        True,
        check=absent("{outside}/touched"),
    ),
    Case(
        "dash redirect outside",
        lambda p: ["sh", "-c", f"echo x > {p.outside}/redirect"],
        True,
        check=absent("{outside}/redirect"),
    ),
    Case(
        "python open() outside",
        lambda p: py(f"open('{p.outside}/py', 'w').write('x')"),
        True,
        check=absent("{outside}/py"),
    ),
    Case(
        "mkdir in /etc",
        lambda p: ["mkdir", "/etc/exec-server-corpus"],
        True,
        check=absent("/etc/exec-server-corpus"),
    ),
    Case(
        "create file in /etc",
        lambda p: ["sh", "-c", "echo x > /etc/exec-server-corpus.conf"],
        True,
        check=absent("/etc/exec-server-corpus.conf"),
    ),
    Case(
        "append to existing file outside",
        lambda p: ["sh", "-c", f"echo x >> {p.outside}/victim"],
        True,
        check=unchanged("{outside}/victim"),
    ),
    Case("chmod outside", lambda p: ["chmod", "600", f"{p.outside}/victim"], True, check=unchanged("{outside}/victim")),
    Case(
        "chown outside",
        lambda p: ["chown", f"{NOBODY}:{NOBODY}", f"{p.outside}/victim"],
        True,
        check=unchanged("{outside}/victim"),
    ),
    Case("rm outside", lambda p: ["rm", "-f", f"{p.outside}/victim"], True, check=unchanged("{outside}/victim")),
    Case(
        "TCP connect to loopback listener",
        lambda p: py(f"import socket; socket.create_connection(('127.0.0.1', {p.tcp_port}), timeout=5)"),
        True,
        check=no_tcp_connection,
    ),
    Case(
        "curl to loopback listener",
        lambda p: ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{p.tcp_port}/"],
        True,
        check=no_tcp_connection,
    ),
    Case(
        "UDP send",
        lambda p: py(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f" s.sendto(b'x', ('127.0.0.1', {p.udp_port}))"
        ),
        True,
        check=no_datagram,
    ),
    Case(
        "grandchild writes outside, root exits 0",
        lambda p: ["sh", "-c", f"sh -c 'touch {p.outside}/grandchild; true'; true"],
        True,
        check=absent("{outside}/grandchild"),
    ),
    Case(
        "python fork: grandchild writes",
        lambda p: py(
            "import os\n"
            "if os.fork() == 0:\n"
            "    if os.fork() == 0:\n"
            f"        open('{p.outside}/forked', 'w')\n"
            "    os.wait()\n"
            "else:\n"
            "    os.wait()\n"
        ),
        True,
        check=absent("{outside}/forked"),
    ),
    Case(
        "readOnly: write in cwd",
        lambda p: ["touch", f"{p.workspace}/readonly-write"],
        True,
        sandbox=READ_ONLY,
        check=absent("{workspace}/readonly-write"),
    ),
    # ---- allowed -----------------------------------------------------------------------
    Case(
        "write inside workspace",
        lambda p: ["sh", "-c", "mkdir -p a/b && echo inside > a/b/f && cat a/b/f"],
        False,
        check=succeeded(b"inside"),
    ),
    Case(
        "write in private TMPDIR",
        lambda p: ["sh", "-c", 'echo tmp > "$TMPDIR/t" && cat "$TMPDIR/t"'],
        False,
        check=succeeded(b"tmp"),
    ),
    Case(
        "read system files",
        lambda p: ["sh", "-c", "head -n1 /etc/passwd && ls /usr/bin | wc -l"],
        False,
        check=succeeded(b"root"),
    ),
    Case(
        "compile and run C",
        lambda p: ["sh", "-c", "cc -o hello hello.c && ./hello"],
        False,
        check=succeeded(b"hello from the sandbox"),
    ),
    Case(
        "network allowed: TCP connect",
        lambda p: py(f"import socket; socket.create_connection(('127.0.0.1', {p.tcp_port}), timeout=5); print('ok')"),
        False,
        sandbox=WITH_NETWORK,
        check=tcp_connection,
    ),
    # ---- benign failures ---------------------------------------------------------------
    Case("false", lambda p: ["false"], False),
    Case("bash -c false", lambda p: ["bash", "-c", "false"], False),
    Case("sh exit 2", lambda p: ["sh", "-c", "exit 2"], False),
    Case(
        'prints "permission denied", exits 1',
        lambda p: ["sh", "-c", "echo 'error: permission denied' >&2; exit 1"],
        False,
    ),
    Case('prints "sandbox", exits 1', lambda p: ["sh", "-c", "echo 'sandbox: step failed' >&2; exit 1"], False),
    Case("ls of a missing path", lambda p: ["ls", "/missing"], False),
    Case('ls of a missing path named "sandbox"', lambda p: ["ls", f"{p.workspace}/sandbox/missing"], False),
    Case(
        "python raises PermissionError itself",
        lambda p: py("raise PermissionError(13, 'Permission denied', '/etc/shadow')"),
        False,
    ),
    Case(
        "curl to a closed port, network allowed",
        lambda p: ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9/"],
        False,
        sandbox=WITH_NETWORK,
    ),
)


@pytest.fixture
def places() -> Iterator[Places]:
    # Under /tmp, not pytest's tmp_path: commands have no CAP_DAC_OVERRIDE, even as root, and
    # a 0700 parent owned by another user would keep them out.
    workspace = Path(tempfile.mkdtemp(prefix="exec-corpus-ws-"))
    outside = Path(tempfile.mkdtemp(prefix="exec-corpus-outside-"))
    tcp = socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        (workspace / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello from the sandbox"); }\n')
        os.chmod(outside, 0o777)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        tcp.setblocking(False)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        yield Places(workspace=workspace, outside=outside, tcp=tcp, udp=udp)
    finally:
        tcp.close()
        udp.close()
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
        for leftover in ("/etc/exec-server-corpus", "/etc/exec-server-corpus.conf"):
            if os.path.isdir(leftover):
                os.rmdir(leftover)
            elif os.path.lexists(leftover):
                os.unlink(leftover)


def _reset_victim(places: Places) -> None:
    victim = places.outside / "victim"
    victim.write_bytes(b"original\n")
    os.chown(victim, 0, 0)
    os.chmod(victim, 0o666)


def _check(case: Case, places: Places, record: TerminalRecord) -> str | None:
    return case.check(places, record) if case.check is not None else None


def _mark(value: bool | None, expected: bool) -> str:
    if value is None:
        return "?"
    return ("denied" if value else "-") + ("" if value == expected else " WRONG")


@contextlib.asynccontextmanager
async def serving(audit_denials: str) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    """A real server (real sandbox) on 127.0.0.1:0 and a client session to it; stopped on exit.

    One server at a time: each server reaps the stray zombie children of its process, so two
    in one process could reap each other's commands.
    """
    # allow_network: the corpus has cases that ask for network: true (--allow-network).
    settings = SandboxSettings(default_mode=SandboxMode.WORKSPACE_WRITE, audit_denials=audit_denials, allow_network=True)
    config = ServerConfig(token=secrets.token_urlsafe(32), sandbox=settings)
    server = Server(config, Sandbox.create(settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        listener = await nursery.start(serve_websocket, server, "127.0.0.1", 0)
        async with open_client(f"ws://127.0.0.1:{listener.port}", token=config.token) as client:
            yield client, server.sandbox.capabilities()
        nursery.cancel_scope.cancel()


async def _run_corpus(client: Client, places: Places, problems: list[str]) -> list[TerminalRecord]:
    records = []
    for case in CASES:
        _reset_victim(places)
        record = await client.run(case.argv(places), cwd=str(places.workspace), sandbox=case.sandbox)
        problem = _check(case, places, record)
        if problem is not None:
            problems.append(f"{case.name}: {problem}")
        records.append(record)
    return records


async def test_denial_corpus(places: Places, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("the corpus needs root: workspaces owned by another uid, /etc untouched by DAC")
    with trio.fail_after(300):
        problems: list[str] = []
        async with serving("auto") as (client, caps):
            if not caps["available"]:
                pytest.skip(f"no kernel sandbox here: {caps.get('reason')}")
            audit_available = caps["denialSource"] == "audit"
            audited_records = await _run_corpus(client, places, problems)
        async with serving("off") as (client, _):
            guessed_records = await _run_corpus(client, places, problems)
        rows = list(zip(CASES, audited_records, guessed_records))

        with capsys.disabled():
            print(f"\n\nsandbox denial corpus: audit column from {caps['denialSource']}, heuristic from stderr")
            print(f"{'case':42} {'expect':7} {'exit':>4}  {'audit':13} {'heuristic':16} audit denials")
            for case, audited, guessed in rows:
                denials = ", ".join(f"{d.blocker} {d.target}" for d in audited.denials)
                print(
                    f"{case.name:42} {'denied' if case.denied else '-':7} {audited.exit_code!s:>4}  "
                    f"{_mark(audited.sandbox_denied, case.denied):13} {_mark(guessed.sandbox_denied, case.denied):16} "
                    f"{denials[:70]}"
                )
            wrong = [case.name for case, _, guessed in rows if guessed.sandbox_denied != case.denied]
            print(f"heuristic: {len(rows) - len(wrong)}/{len(rows)} right; misses: {wrong}\n")

        for case, audited, guessed in rows:
            assert audited.failure is None and guessed.failure is None, case.name
            assert guessed.sandbox_denied_source == "heuristic", case.name
            if audit_available:
                assert audited.sandbox_denied_source == "audit", case.name
                if audited.sandbox_denied != case.denied:
                    problems.append(
                        f"{case.name}: audit said denied={audited.sandbox_denied} {audited.denials}, "
                        f"expected {case.denied}; stderr {audited.stderr[-300:]!r}"
                    )
                if case.denied and not audited.denials:
                    problems.append(f"{case.name}: denied without any denial listed")
        assert not problems, "\n".join(problems)


async def test_output_to_dev_null_is_not_a_denial(places: Places) -> None:
    # A shell redirect opens /dev/null inside the sandbox; the program's isatty() probe on it
    # is an ioctl (TCGETS) that Landlock refuses unless the launcher grants fs.ioctl_dev there,
    # and then every `cmd > /dev/null` of a program that probes its stdout reads as denied.
    if os.geteuid() != 0:
        pytest.skip("needs root, like the corpus")
    with trio.fail_after(60):
        async with serving("auto") as (client, caps):
            if caps["denialSource"] != "audit":
                pytest.skip("only audit sees this denial")
            argv = ["sh", "-c", "ls / >/dev/null"]
            record = await client.run(argv, cwd=str(places.workspace), sandbox=WORKSPACE_WRITE)
        assert record.exit_code == 0
        assert (record.sandbox_denied, record.denials) == (False, ())
