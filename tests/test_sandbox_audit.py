"""Audit-based denial detection: record parsing, the pid mapping, and real kernel records.

The parser and ledger tests replay record lines captured on this machine (Linux 6.18,
Landlock ABI 7). The kernel tests compile a tiny restrict-and-exec program (a test fixture,
independent of the product launcher) that applies Landlock with
LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON and a logged seccomp socket filter, and check that the
monitor maps each record to the right pid. They skip, saying why, where audit is unavailable.
"""

from __future__ import annotations

import os
import fcntl
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from exec_server.sandbox._audit import (
    AUDIT_LANDLOCK_ACCESS,
    AUDIT_LANDLOCK_DOMAIN,
    AUDIT_SECCOMP,
    AUDIT_CWD,
    AUDIT_EOE,
    AUDIT_PATH,
    AUDIT_SYSCALL,
    DEFAULT_LOCK_PATH,
    AuditBacklogProbe,
    AuditControl,
    AuditStatus,
    AuditUnavailable,
    acquire_audit,
    denial_rules,
    iter_messages,
    parse_record,
)
from exec_server.sandbox._denials import (
    MAX_DENIALS_PER_PROCESS,
    UNVERIFIED_TTL_S,
    DenialLedger,
    DenialMonitor,
    _Placement,
    place_task,
)
from exec_server.sandbox._proctree import ForkTracker
from protocol import Denial, SandboxMode, SandboxPolicy

# Captured verbatim from the audit multicast group on this machine.
REAL_ACCESS_FS = (
    b'audit(1795326163.986:3): domain=166a15023 blockers=fs.make_reg path="/etc" dev="vda" ino=19'
)
REAL_DOMAIN_ALLOCATED = (
    b"audit(1795326163.986:3): domain=166a15023 status=allocated mode=enforcing pid=4515 uid=0"
    b' exe="/tmp/probe/ll" comm="ll"'
)
REAL_SYSCALL = (
    b"audit(1795326163.986:3): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c"
    b" a1=563b9d683908 a2=241 a3=1b6 items=0 ppid=4472 pid=4515 auid=4294967295 uid=0 gid=0"
    b" euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"sh\""
    b' exe="/usr/bin/dash" key=(null)'
)
REAL_DOMAIN_DEALLOCATED = b"audit(1795326164.046:4): domain=166a15023 status=deallocated denials=1"
REAL_ACCESS_NET = (
    b"audit(1795326165.158:8): domain=166a15036 blockers=net.connect_tcp daddr=127.0.0.1 dest=9"
)
REAL_SECCOMP = (
    b"audit(1795326164.790:7): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4520"
    b' comm="python3" exe="/usr/local/bin/python3.11" sig=0 arch=c000003e'
    b" syscall=41 compat=0 ip=0x7f4181928dc7 code=0x50000"
)

# A refused chmod seen by our syscall rule (captured on a host, uid 65534; the ledger reads no uid).
REAL_UID_CHMOD = [
    (
        AUDIT_SYSCALL,
        b"audit(1795327921.330:546): arch=c000003e syscall=268 success=no exit=-1 a0=ffffff9c"
        b" a1=561d0bb82c20 a2=180 a3=0 items=1 ppid=8494 pid=8602 auid=4294967295 uid=65534"
        b" gid=65534 euid=65534 suid=65534 fsuid=65534 egid=65534 sgid=65534 fsgid=65534"
        b' tty=(none) ses=4294967295 comm="chmod" exe="/usr/bin/chmod" key="exec-server-denial"',
    ),
    (AUDIT_CWD, b'audit(1795327921.330:546): cwd="/srv/project"'),
    (
        AUDIT_PATH,
        b'audit(1795327921.330:546): item=0 name="/etc/hostname" inode=1234 dev=fe:00 mode=0100644'
        b" ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0",
    ),
    (AUDIT_EOE, b"audit(1795327921.330:546): "),
]

POLICY = SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE)


def record(record_type: int, line: bytes, **overrides: str):  # type: ignore[no-untyped-def]
    parsed = parse_record(record_type, line)
    assert parsed is not None
    if overrides:
        parsed = type(parsed)(
            type=parsed.type,
            serial=parsed.serial,
            timestamp=parsed.timestamp,
            fields={**parsed.fields, **overrides},
        )
    return parsed


class _HeldKernel(AuditBacklogProbe):
    """A probe whose kernel answers only when the test says so; question k answers k."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.release = trio.Event()

    async def _ask(self) -> int | None:
        self.asked += 1
        await self.release.wait()
        self.release = trio.Event()
        return self.asked


async def test_backlog_questions_are_shared_only_by_callers_that_asked_before_they_were_sent() -> None:
    probe = _HeldKernel()
    answers: dict[str, int | None] = {}

    async def ask(name: str) -> None:
        answers[name] = await probe.backlog()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.run)
            nursery.start_soon(ask, "first")
            await trio.testing.wait_all_tasks_blocked()
            assert probe.asked == 1  # in flight
            for name in ("second", "third", "fourth"):
                nursery.start_soon(ask, name)
            async with trio.open_nursery() as gone:
                gone.start_soon(ask, "cancelled")
                await trio.testing.wait_all_tasks_blocked()
                gone.cancel_scope.cancel()
            probe.release.set()
            await trio.testing.wait_all_tasks_blocked()
            # The three who came while question 1 was out share question 2, not answer 1.
            assert (probe.asked, answers) == (2, {"first": 1})
            probe.release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert answers == {"first": 1, "second": 2, "third": 2, "fourth": 2}
            assert probe.asked == 2  # nobody waits: no third question
            nursery.cancel_scope.cancel()
    probe.close()


# ---- parsing ----------------------------------------------------------------------------


def test_parse_landlock_access_fs() -> None:
    parsed = parse_record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS + b"\0")
    assert parsed is not None
    assert parsed.type == AUDIT_LANDLOCK_ACCESS
    assert parsed.serial == 3
    assert parsed.timestamp == pytest.approx(1795326163.986)
    assert parsed.fields == {
        "domain": "166a15023",
        "blockers": "fs.make_reg",
        "path": "/etc",
        "dev": "vda",
        "ino": "19",
    }


def test_parse_landlock_domain_and_syscall() -> None:
    domain = parse_record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED)
    assert domain is not None
    assert domain.fields["status"] == "allocated"
    assert domain.fields["pid"] == "4515"
    assert domain.fields["exe"] == "/tmp/probe/ll"
    syscall = parse_record(AUDIT_SYSCALL, REAL_SYSCALL)
    assert syscall is not None
    assert (syscall.fields["pid"], syscall.fields["ppid"], syscall.fields["exit"]) == ("4515", "4472", "-13")
    assert syscall.fields["exe"] == "/usr/bin/dash"
    dealloc = parse_record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_DEALLOCATED)
    assert dealloc is not None
    assert dealloc.fields == {"domain": "166a15023", "status": "deallocated", "denials": "1"}


def test_parse_seccomp_and_net() -> None:
    seccomp = parse_record(AUDIT_SECCOMP, REAL_SECCOMP)
    assert seccomp is not None
    assert (seccomp.fields["pid"], seccomp.fields["syscall"], seccomp.fields["code"]) == ("4520", "41", "0x50000")
    net = parse_record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_NET)
    assert net is not None
    assert (net.fields["blockers"], net.fields["daddr"], net.fields["dest"]) == ("net.connect_tcp", "127.0.0.1", "9")


def test_untrusted_strings_are_hex_decoded_but_ids_are_not() -> None:
    # The kernel hex-encodes a path with a space (audit_log_untrustedstring); a domain id that
    # happens to be all hex digits must stay as it is.
    line = b"audit(1.002:5): domain=ABCDEF12 blockers=fs.make_reg path=2F746D702F6120622F63 dev=\"vda\""
    parsed = parse_record(AUDIT_LANDLOCK_ACCESS, line)
    assert parsed is not None
    assert parsed.fields["path"] == "/tmp/a b/c"
    assert parsed.fields["domain"] == "ABCDEF12"
    assert parsed.timestamp == pytest.approx(1.002)


def test_record_without_header_is_ignored() -> None:
    assert parse_record(AUDIT_LANDLOCK_ACCESS, b"garbage") is None


def test_iter_messages_splits_a_datagram() -> None:
    def message(msg_type: int, seq: int, body: bytes) -> bytes:
        raw = struct.pack("=IHHII", 16 + len(body), msg_type, 0, seq, 0) + body
        return raw + b"\0" * (-len(raw) % 4)

    data = message(1423, 1, b"abc") + message(1424, 2, b"defgh")
    assert list(iter_messages(data)) == [(1423, 1, b"abc"), (1424, 2, b"defgh")]


# ---- the ledger (pid mapping), with a scripted process tree ----------------------------


class Tree:
    """A fake process table for ``place``: pid -> root (None = not ours; absent = gone)."""

    def __init__(self, **placements: int | None) -> None:
        self.roots = {int(pid.lstrip("p")): root for pid, root in placements.items()}

    def place(self, pid: int, server_pid: int) -> _Placement:
        if pid not in self.roots:
            return _Placement(root=pid, verified=False)
        return _Placement(root=self.roots[pid], verified=True)


def test_access_waits_for_its_domain_record_then_maps_to_creator() -> None:
    tree = Tree(p4515=4515)
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed([record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS), record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED)])
    assert ledger.take(4515) == (True, (Denial(blocker="fs.make_reg", target="/etc"),))
    assert ledger.take(4515) == (False, ())  # forgotten once reported


def test_grandchild_denials_reuse_the_domain_of_the_root() -> None:
    # The domain record names the creator (the launched pid) whoever hit the denial.
    tree = Tree(p4515=4515)
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed([record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS), record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED)])
    # a later denial in the same domain, e.g. by a grandchild, has no new domain record
    ledger.feed([record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_NET, domain="166a15023")])
    denied, denials = ledger.take(4515)
    assert denied
    assert denials == (
        Denial(blocker="fs.make_reg", target="/etc"),
        Denial(blocker="net.connect_tcp", target="127.0.0.1:9"),
    )


def test_seccomp_record_of_a_descendant_maps_to_its_root() -> None:
    tree = Tree(p4520=777)
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed([record(AUDIT_SECCOMP, REAL_SECCOMP)])
    assert ledger.take(777) == (True, (Denial(blocker="seccomp", target="socket"),))


def test_uid_drop_syscall_event_maps_by_pid_with_its_path() -> None:
    tree = Tree(p8602=8494)
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed([record(kind, line) for kind, line in REAL_UID_CHMOD])
    assert ledger.take(8494) == (True, (Denial(blocker="fs.chmod", target="/etc/hostname"),))


def test_uid_drop_event_of_a_gone_task_is_placed_by_its_parent() -> None:
    tree = Tree(p8494=8494)  # 8602 (chmod) already reaped; its parent is our child
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed([record(kind, line) for kind, line in REAL_UID_CHMOD])
    assert ledger.take(8494)[0] is True


def test_uid_drop_event_of_a_gone_direct_child_stays_with_its_pid() -> None:
    # The command itself (child of the server, pid 8494 here) exited before the record was read.
    ledger = DenialLedger(8494, place=Tree().place)
    ledger.feed([record(kind, line) for kind, line in REAL_UID_CHMOD])
    assert ledger.take(8602) == (True, (Denial(blocker="fs.chmod", target="/etc/hostname"),))


def test_relative_path_is_resolved_against_the_cwd_record() -> None:
    tree = Tree(p8602=8602)
    ledger = DenialLedger(1, place=tree.place)
    records = [record(kind, line) for kind, line in REAL_UID_CHMOD]
    records[2] = record(AUDIT_PATH, REAL_UID_CHMOD[2][1], name="sub/../x")
    ledger.feed(records)
    assert ledger.take(8602) == (True, (Denial(blocker="fs.chmod", target="/srv/project/x"),))


def test_syscall_records_of_other_rules_and_landlock_duplicates_are_ignored() -> None:
    tree = Tree(p8602=8602, p4515=4515)
    ledger = DenialLedger(1, place=tree.place)
    foreign_key = [record(kind, line) for kind, line in REAL_UID_CHMOD]
    foreign_key[0] = record(AUDIT_SYSCALL, REAL_UID_CHMOD[0][1], key="(null)")
    ledger.feed(foreign_key)
    assert ledger.take(8602) == (False, ())
    # Landlock refused it (ACCESS record) and our rule saw the same failure: count it once.
    duplicate = record(AUDIT_SYSCALL, REAL_SYSCALL, key="exec-server-denial")
    ledger.feed(
        [
            record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS),
            record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED),
            duplicate,
            record(AUDIT_EOE, b"audit(1795326163.986:3): "),
        ]
    )
    assert ledger.take(4515) == (True, (Denial(blocker="fs.make_reg", target="/etc"),))


def test_records_of_foreign_processes_are_dropped() -> None:
    tree = Tree(p4515=None, p4520=None)
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed(
        [
            record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS),
            record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED),
            record(AUDIT_SECCOMP, REAL_SECCOMP),
        ]
    )
    assert ledger.take(4515) == (False, ())
    assert ledger.take(4520) == (False, ())
    assert ledger.unattributed == 2


def test_denials_are_capped_but_still_counted_as_denied() -> None:
    tree = Tree(p4515=4515)
    ledger = DenialLedger(1, place=tree.place)
    accesses = [
        record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS, path=f"/etc/d{i}") for i in range(MAX_DENIALS_PER_PROCESS + 5)
    ]
    ledger.feed([*accesses[:1], record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED), *accesses[1:]])
    denied, denials = ledger.take(4515)
    assert denied
    assert [d.target for d in denials] == [f"/etc/d{i}" for i in range(MAX_DENIALS_PER_PROCESS)]


def test_a_gone_pid_is_kept_briefly_then_expires() -> None:
    now = [100.0]
    ledger = DenialLedger(1, place=Tree().place, clock=lambda: now[0])
    ledger.feed([record(AUDIT_SECCOMP, REAL_SECCOMP)])  # pid 4520 already gone: unverified
    now[0] += UNVERIFIED_TTL_S + 0.1
    ledger.feed([])
    assert ledger.take(4520) == (False, ())
    ledger.feed([record(AUDIT_SECCOMP, REAL_SECCOMP)])
    assert ledger.take(4520) == (True, (Denial(blocker="seccomp", target="socket"),))


def test_domain_of_a_reported_pid_no_longer_attributes() -> None:
    # pid reuse: once 4515 was reported, its domain's late records must not land on a new 4515.
    tree = Tree(p4515=4515)
    ledger = DenialLedger(1, place=tree.place)
    ledger.feed([record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS), record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_ALLOCATED)])
    ledger.take(4515)
    ledger.feed([record(AUDIT_LANDLOCK_ACCESS, REAL_ACCESS_FS)])
    assert ledger.take(4515) == (False, ())
    ledger.feed([record(AUDIT_LANDLOCK_DOMAIN, REAL_DOMAIN_DEALLOCATED)])


async def test_place_task_finds_the_child_of_the_server_for_a_live_grandchild() -> None:
    with trio.fail_after(10):
        # sh (our child) -> sleep (grandchild); both alive while we look.
        proc = await trio.lowlevel.open_process(
            ["sh", "-c", "sleep 5 & echo $!; wait"], stdout=subprocess.PIPE, process_group=0
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(64)
            grandchild = int(line)
            assert place_task(grandchild, os.getpid()) == _Placement(root=proc.pid, verified=True)
            assert place_task(proc.pid, os.getpid()) == _Placement(root=proc.pid, verified=True)
            assert place_task(1, os.getpid()).root is None  # init is not ours
        finally:
            proc.kill()
            await proc.wait()
            await proc.stdout.aclose()  # type: ignore[union-attr]


ORPHAN_SCRIPT = r"""
import ctypes, os, subprocess, sys, time
from exec_server.sandbox._denials import place_task
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, like the server
root = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, process_group=0)
orphan = int(root.stdout.readline())
root.wait()  # the command exits; its background child is re-parented to us
for _ in range(200):
    with open(f"/proc/{orphan}/stat") as f:
        if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
            break
    time.sleep(0.01)
placement = place_task(orphan, os.getpid())
os.kill(orphan, 9)
os.waitpid(orphan, 0)
print(placement.root == root.pid, placement.verified)
"""


async def test_place_task_maps_an_orphan_re_parented_to_a_subreaper_server_to_its_group() -> None:
    with trio.fail_after(20):
        result = await trio.run_process(
            [sys.executable, "-c", ORPHAN_SCRIPT], capture_stdout=True, cwd=str(Path(__file__).parent.parent)
        )
        assert result.stdout.split() == [b"True", b"True"]


# ---- real kernel records ----------------------------------------------------------------

RESTRICT_C = r"""
/* test fixture: restrict self with Landlock (+ logged seccomp socket filter), then exec */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
struct rs { uint64_t fs, net, scoped; };
struct pb { uint64_t allowed; int32_t fd; } __attribute__((packed));
#define ALL ((1ULL << 16) - 1)
#define READ ((1ULL << 0) | (1ULL << 2) | (1ULL << 3))
static void add(int rs, const char *path, uint64_t allowed) {
    struct pb rule = {allowed, open(path, O_PATH | O_CLOEXEC)};
    if (syscall(445, rs, 1, &rule, 0)) { perror(path); exit(125); }
}
int main(int argc, char **argv) {
    struct rs attr = {ALL, 3, 0};
    int rs = syscall(444, &attr, sizeof attr, 0);
    if (rs < 0) { perror("landlock_create_ruleset"); return 125; }
    add(rs, "/", READ);
    add(rs, argv[1], ALL);
    add(rs, "/dev/null", (1ULL << 1) | (1ULL << 2) | (1ULL << 14) | (1ULL << 15));
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOCK_DGRAM, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 13),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, &prog)) {
        perror("seccomp");
        return 125;
    }
    if (syscall(446, rs, 2 /* LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON */)) { perror("restrict_self"); return 125; }
    execvp(argv[2], argv + 2);
    perror("execvp");
    return 127;
}
"""


def _landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return max(int(libc.syscall(444, None, 0, 1)), 0)


@pytest.fixture(scope="module")
def restrict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _landlock_abi() < 7:
        pytest.skip(f"Landlock ABI {_landlock_abi()} < 7: the kernel writes no Landlock audit records")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the Landlock test fixture")
    directory = tmp_path_factory.mktemp("restrict")
    (directory / "restrict.c").write_text(RESTRICT_C)
    subprocess.run([cc, "-O2", "-o", str(directory / "restrict"), str(directory / "restrict.c")], check=True)
    # A task that is refused a UDP socket and exits at once: as a grandchild it is usually
    # reaped by its shell before its seccomp record is read.
    (directory / "udp.c").write_text(
        "#include <sys/socket.h>\n#include <unistd.h>\nint main(void) { socket(AF_INET, SOCK_DGRAM, 0); _exit(1); }\n"
    )
    subprocess.run([cc, "-O2", "-o", str(directory / "udp"), str(directory / "udp.c")], check=True)
    return directory / "restrict"


@pytest.fixture
async def monitor(tmp_path: Path, nursery: trio.Nursery) -> DenialMonitor:
    try:
        AuditControl().close()
    except AuditUnavailable as exc:
        pytest.skip(f"kernel audit unavailable here: {exc}")
    # The default lock file: this monitor cooperates with any exec-server running on the host.
    denial_monitor = DenialMonitor("on", landlock_abi=_landlock_abi())
    await nursery.start(denial_monitor.run)
    return denial_monitor


async def _run(restrict: Path, workspace: Path, *argv: str) -> tuple[int, int]:
    # A new process group, as the server spawns commands.
    proc = await trio.lowlevel.open_process(
        [str(restrict), str(workspace), *argv], stderr=subprocess.DEVNULL, process_group=0
    )
    return proc.pid, await proc.wait()


async def test_real_landlock_denials_map_to_the_launched_pid(
    monitor: DenialMonitor, restrict: Path, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        assert monitor.source == "audit"
        pid, code = await _run(restrict, tmp_path, "sh", "-c", "echo x > /etc/exec-server-audit-test")
        report = await monitor.report_denials(POLICY, pid, code, b"", b"")
        assert code == 2
        assert report.denied and report.source == "audit"
        assert report.denials == (Denial(blocker="fs.make_reg", target="/etc"),)
        assert not os.path.exists("/etc/exec-server-audit-test")

        # allowed work inside the writable directory: no denial, even with a non-zero exit
        pid, code = await _run(restrict, tmp_path, "sh", "-c", f"echo x > {tmp_path}/ok; exit 3")
        report = await monitor.report_denials(POLICY, pid, code, b"", b"")
        assert (code, report.denied, report.denials) == (3, False, ())


async def test_real_grandchild_denials_map_to_the_root(monitor: DenialMonitor, restrict: Path, tmp_path: Path) -> None:
    with trio.fail_after(30):
        # a grandchild writes (Landlock) and another sends UDP (seccomp); the root exits 0
        script = (
            "sh -c 'touch /etc/exec-server-audit-gc; true'; "
            "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)'; exit 0"
        )
        pid, code = await _run(restrict, tmp_path, "sh", "-c", script)
        report = await monitor.report_denials(POLICY, pid, code, b"", b"")
        assert code == 0
        assert report.denied
        assert set(report.denials) == {
            Denial(blocker="fs.make_reg", target="/etc"),
            Denial(blocker="seccomp", target="socket"),
        }
        # a neighbour running at the same time is not blamed
        pid, code = await _run(restrict, tmp_path, "true")
        assert (await monitor.report_denials(POLICY, pid, code, b"", b"")).denied is False


async def test_real_short_lived_grandchild_network_denials_map_to_the_root(
    monitor: DenialMonitor, restrict: Path, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        udp = restrict.parent / "udp"
        reports = []
        for _ in range(20):
            pid, code = await _run(restrict, tmp_path, "sh", "-c", f"{udp}; true")
            reports.append(await monitor.report_denials(POLICY, pid, code, b"", b""))
        assert [r.denials for r in reports] == [(Denial(blocker="seccomp", target="socket"),)] * 20


async def test_fork_tracker_knows_the_root_of_an_exited_grandchild() -> None:
    try:
        tracker = ForkTracker(os.getpid())
    except OSError as exc:
        pytest.skip(f"no process connector here: {exc}")
    with trio.fail_after(10), tracker:
        proc = await trio.lowlevel.open_process(["sh", "-c", "true & echo $!; wait"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive_some(64)
        await proc.wait()
        await proc.stdout.aclose()
        grandchild = int(line)
        tracker.read_available()
        assert not os.path.exists(f"/proc/{grandchild}")  # gone: /proc cannot tell any more
        assert tracker.root_of(grandchild) == proc.pid
        assert tracker.root_of(proc.pid) == proc.pid
        assert tracker.root_of(1) is None


async def test_real_tcp_connect_denial_names_the_destination(
    monitor: DenialMonitor, restrict: Path, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        # A plain non-blocking socket: the test only ever polls it.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        with listener:
            pid, code = await _run(
                restrict, tmp_path, "python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"
            )
            report = await monitor.report_denials(POLICY, pid, code, b"", b"")
            assert report.denials == (Denial(blocker="net.connect_tcp", target=f"127.0.0.1:{port}"),)
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing reached the listener


async def test_real_read_only_view_denial_is_seen_by_the_syscall_rule(monitor: DenialMonitor, tmp_path: Path) -> None:
    # EROFS from a read-only bind mount, as the sandbox's view gives: the VFS refuses the
    # chmod before any Landlock hook runs, so only the syscall rule can see it.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a read-only mount")
    with trio.fail_after(30):
        before = os.stat("/etc/hostname").st_mode
        script = "mount --bind /etc /etc && mount -o remount,bind,ro /etc && chmod 600 /etc/hostname"
        proc = await trio.lowlevel.open_process(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        code = await proc.wait()
        report = await monitor.report_denials(POLICY, proc.pid, code, b"", b"")
        assert code == 1
        assert report.denials == (Denial(blocker="fs.chmod", target="/etc/hostname"),)
        assert os.stat("/etc/hostname").st_mode == before


async def test_unsandboxed_processes_report_source_none(monitor: DenialMonitor) -> None:
    with trio.fail_after(5):
        report = await monitor.report_denials(None, 1, 1, b"", b"Permission denied")
        assert (report.denied, report.source) == (False, "none")
        report = await monitor.report_denials(SandboxPolicy(mode=SandboxMode.NONE), 1, 1, b"", b"")
        assert report.source == "none"


class FakeAuditControl:
    """The kernel side of a lease, in memory: what a lease protocol test needs and nothing more."""

    kernel: dict[str, object] = {}

    def __init__(self) -> None:
        self.closed = False

    def get_status(self) -> AuditStatus:
        return AuditStatus(
            enabled=int(self.kernel["enabled"]),  # type: ignore[call-overload]
            failure=1,
            pid=0,
            rate_limit=0,
            backlog_limit=int(self.kernel["backlog_limit"]),  # type: ignore[call-overload]
            lost=0,
            backlog=0,
        )

    def set_status(self, *, enabled: int | None = None, backlog_limit: int | None = None) -> None:
        if enabled is not None:
            self.kernel["enabled"] = enabled
        if backlog_limit is not None:
            self.kernel["backlog_limit"] = backlog_limit

    def add_rule(self, rule: bytes) -> bool:
        rules: set[bytes] = self.kernel["rules"]  # type: ignore[assignment]
        added = rule not in rules
        rules.add(rule)
        return added

    def delete_rule(self, rule: bytes) -> bool:
        rules: set[bytes] = self.kernel["rules"]  # type: ignore[assignment]
        present = rule in rules
        rules.discard(rule)
        return present

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_kernel() -> dict[str, object]:
    FakeAuditControl.kernel = {"enabled": 0, "backlog_limit": 64, "rules": set()}
    return FakeAuditControl.kernel


def _lease(lock: Path, *, rules: bool = False):  # type: ignore[no-untyped-def]
    return acquire_audit(str(lock), uid_drop_rules=rules, control=FakeAuditControl())  # type: ignore[arg-type]


def test_two_leases_at_once_neither_blocks_and_the_last_restores(
    tmp_path: Path, fake_kernel: dict[str, object]
) -> None:
    lock = tmp_path / "audit.json"
    first = _lease(lock, rules=True)
    second = _lease(lock)  # must not block on the first one's shared lock
    assert (fake_kernel["enabled"], fake_kernel["backlog_limit"]) == (1, 8192)
    assert len(fake_kernel["rules"]) == len(denial_rules())  # type: ignore[arg-type]
    first.release()
    assert fake_kernel["enabled"] == 1  # the second still needs it
    second.release()
    second.release()  # idempotent
    assert fake_kernel == {"enabled": 0, "backlog_limit": 64, "rules": set()}
    assert lock.read_text() == ""


def test_the_state_saved_is_the_first_users(tmp_path: Path, fake_kernel: dict[str, object]) -> None:
    lock = tmp_path / "audit.json"
    first = _lease(lock)
    fake_kernel["backlog_limit"] = 9000  # changed while we run: not ours to keep
    second = _lease(lock)
    second.release()
    first.release()
    assert (fake_kernel["enabled"], fake_kernel["backlog_limit"]) == (0, 64)


def test_a_locked_audit_configuration_is_left_alone(tmp_path: Path, fake_kernel: dict[str, object]) -> None:
    fake_kernel["enabled"] = 2
    lease = _lease(tmp_path / "audit.json", rules=True)
    assert (lease.rules, fake_kernel["rules"]) == (False, set())
    lease.release()
    assert fake_kernel["enabled"] == 2


def test_a_crashed_lease_is_restored_by_the_next_last_user(tmp_path: Path, fake_kernel: dict[str, object]) -> None:
    lock = tmp_path / "audit.json"
    crashed = _lease(lock, rules=True)
    os.close(crashed.lock_file)  # died: its flock is gone, its saved state stays
    survivor = _lease(lock)
    survivor.release()
    assert fake_kernel == {"enabled": 0, "backlog_limit": 64, "rules": set()}


def _other_users_of_audit() -> bool:
    """True if another exec-server on this host holds the audit lease right now."""
    try:
        fd = os.open(DEFAULT_LOCK_PATH, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def test_audit_state_is_restored_when_the_last_user_stops() -> None:
    with trio.fail_after(10):
        try:
            control = AuditControl()
            before = control.get_status()
        except AuditUnavailable as exc:
            pytest.skip(f"kernel audit unavailable here: {exc}")
        if _other_users_of_audit():
            control.close()
            pytest.skip("another exec-server on this host holds the audit lease; restore is theirs")
        first = DenialMonitor("on", landlock_abi=_landlock_abi())
        second = DenialMonitor("on", landlock_abi=_landlock_abi())
        async with trio.open_nursery() as outer:
            await outer.start(first.run)
            async with trio.open_nursery() as inner:
                await inner.start(second.run)
                assert control.get_status().enabled in (1, 2)
                inner.cancel_scope.cancel()
            # `second` stopped, `first` still runs: audit must stay on for it
            assert control.get_status().enabled in (1, 2)
            outer.cancel_scope.cancel()
        after = control.get_status()
        control.close()
        assert (after.enabled, after.backlog_limit) == (before.enabled, before.backlog_limit)
        assert Path(DEFAULT_LOCK_PATH).read_text() == ""


def test_a_crashed_user_is_restored_by_the_next_last_user() -> None:
    try:
        control = AuditControl()
        before = control.get_status()
    except AuditUnavailable as exc:
        pytest.skip(f"kernel audit unavailable here: {exc}")
    if before.enabled == 2:
        control.close()
        pytest.skip("audit is locked (enabled=2): nothing is ever changed or restored")
    if _other_users_of_audit():
        control.close()
        pytest.skip("another exec-server on this host holds the audit lease; restore is theirs")
    # The shared lock file, as a real server uses it (a private one could switch audit off
    # under another server running on this host).
    crashed = acquire_audit(uid_drop_rules=True)
    os.close(crashed.lock_file)  # the process died: its flock is gone, its saved state stays
    crashed.control.close()
    assert control.get_status().enabled in (1, 2)
    survivor = acquire_audit()
    survivor.release()
    after = control.get_status()
    rules_left = [control.delete_rule(rule) for rule in denial_rules()]
    control.close()
    assert not any(rules_left)  # the crashed server's rules were removed too
    assert (after.enabled, after.backlog_limit) == (before.enabled, before.backlog_limit)
    assert Path(DEFAULT_LOCK_PATH).read_text() == ""


USERNS_SCRIPT = r"""
import sys, trio
from exec_server.sandbox._audit import AuditUnavailable
from exec_server.sandbox._denials import DenialMonitor
from protocol import SandboxMode, SandboxPolicy

async def main(mode):
    monitor = DenialMonitor(mode, landlock_abi=7, lock_path="/nonexistent/never-written.json")
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(monitor.run)
        except AuditUnavailable as exc:
            print("refused:", exc)
            return
        report = await monitor.report_denials(
            SandboxPolicy(mode=SandboxMode.READ_ONLY), 1, 2, b"", b"sh: 1: cannot create /etc/x: Permission denied\n"
        )
        print(monitor.source, report.source, report.denied, "|", monitor.unavailable_reason)
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1])
"""


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_in_a_user_namespace_auto_falls_back_and_on_refuses(mode: str) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    with trio.fail_after(30):
        result = await trio.run_process(
            ["unshare", "--user", "--map-root-user", sys.executable, "-c", USERNS_SCRIPT, mode],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(Path(__file__).parent.parent),
        )
        if result.returncode != 0 and b"unshare" in result.stderr:
            pytest.skip(f"user namespaces unavailable: {result.stderr.decode().strip()}")
        out = result.stdout.decode()
        if mode == "auto":
            assert out.startswith("heuristic heuristic True | running inside a user namespace"), out
        else:
            assert out.startswith("refused: running inside a user namespace"), out


def test_audit_on_fails_without_landlock_logging() -> None:
    with pytest.raises(AuditUnavailable, match="ABI 6"):
        DenialMonitor("on", landlock_abi=6)
    assert DenialMonitor("auto", landlock_abi=6).source == "heuristic"
    assert DenialMonitor("off", landlock_abi=7).source == "heuristic"
    with pytest.raises(ValueError):
        DenialMonitor("maybe", landlock_abi=7)
