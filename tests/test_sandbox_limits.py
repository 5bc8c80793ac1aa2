"""Resource limits and operator ceilings, through the real server, the real launcher and the real kernel.

Each limit is hit by a real command and the record must say which one (``limitExceeded``),
from the kernel's own account: the cgroup's OOM-kill and refused-fork counters, the
SIGXCPU/SIGXFSZ deaths of the rlimits. Each ceiling refuses with -32006 and names itself.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

from conftest import RunningServer, StartServer
from exec_server.sandbox import Sandbox, SandboxSettings, SandboxUnavailable, _cgroup, _limits
from protocol import ResourceLimits, SandboxMode, SandboxPolicy
from rawclient import cli_env, no_leftover_processes, open_raw_client, output_of, run_cli_server  # noqa: F401

MIB: Final = 1024 * 1024
TIMEOUT_S: Final = 60
SANDBOX_UNAVAILABLE: Final = -32006
INVALID_PARAMS: Final = -32602
# A Python every uid can run (a sandboxed command may run as nobody on a root server).
SYSTEM_PYTHON: Final = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
LIMITS_SETTINGS: Final = SandboxSettings(
    default_mode=SandboxMode.READ_ONLY, allow_unsandboxed=True, audit_denials="off"
)
CGROUPS, _PROBLEMS = _cgroup.detect()
HAS_MEMORY_CGROUP: Final = CGROUPS is not None and _cgroup.MEMORY in CGROUPS.controllers
HAS_PIDS_CGROUP: Final = CGROUPS is not None and _cgroup.PIDS in CGROUPS.controllers


def _python(mode: str) -> str:
    return sys.executable if mode == "none" else SYSTEM_PYTHON


def _exited(events: list[Any]) -> dict[str, Any]:
    [exited] = [event.params for event in events if event.kind == "exited"]
    return exited


def _own_command_cgroups() -> list[str]:
    """Command cgroups this test process (the server) still has, in every hierarchy."""
    if CGROUPS is None:
        return []
    found: list[str] = []
    for hierarchy in CGROUPS.hierarchies.values():
        found += glob.glob(os.path.join(hierarchy.own, f"{_cgroup.PREFIX}{_cgroup.pid_namespace()}.{os.getpid()}.*"))
    return found


# A closed command's cgroup goes once its last member is reaped: at once, or on the server's
# next sweep of busy ones (sandbox/_limits.py, SWEEP_INTERVAL_S) when the init of its PID
# namespace was still dying.
CGROUPS_GONE_S: Final = 5.0


async def _command_cgroups_gone() -> None:
    """Until this server has no command cgroup left (bounded by the caller's guard)."""
    while _own_command_cgroups():
        await trio.sleep(0.05)


async def _serve(start_server: StartServer, **settings: Any) -> RunningServer:
    return await start_server(sandbox=attrs.evolve(LIMITS_SETTINGS, **settings))


# --- the limits, hit ----------------------------------------------------------------------


@pytest.mark.skipif(not HAS_MEMORY_CGROUP, reason=f"no memory cgroup here: {_PROBLEMS.get('memory')}")
@pytest.mark.parametrize("mode", ["readOnly", "none"])
async def test_a_1gib_allocation_under_a_256mib_limit_is_killed_and_reported_as_memory(
    start_server: StartServer, no_leftover_processes: None, mode: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            caps = client.initialize_result["capabilities"]["sandbox"]  # type: ignore[index]
            assert "memoryBytes" in caps["limits"]
            argv = [_python(mode), "-c", "import sys; b = b'x' * (1 << 30); print('survived', len(b))"]
            events = await client.run(
                "big", argv, cwd="/", sandbox={"mode": mode}, limits={"memoryBytes": 256 * MIB}
            )
            exited = _exited(events)
            assert exited["signal"] == "SIGKILL" and exited["exitCode"] == 128 + signal.SIGKILL
            assert exited["limitExceeded"] == "memory"
            assert {"blocker": "limit.memory", "target": str(256 * MIB)} in exited["denials"]
            assert exited["sandboxDenied"] is True
            assert b"survived" not in output_of(events)
            # The read result carries the same exit info.
            read = await client.call("process/read", {"processId": "big"})
            assert read["limitExceeded"] == "memory"
            # A command under the limit is not reported.
            small = _exited(
                await client.run(
                    "small", [_python(mode), "-c", "b = b'x' * (16 << 20)"], cwd="/",
                    sandbox={"mode": mode}, limits={"memoryBytes": 256 * MIB},
                )  # fmt: skip
            )
            assert small["exitCode"] == 0 and small["limitExceeded"] is None
        await running.server.shutdown(grace=0)
    with trio.fail_after(CGROUPS_GONE_S):
        await _command_cgroups_gone()


FORK_LOOP: Final = textwrap.dedent(
    """
    import os, sys, time
    refused = 0
    children = []
    for _ in range(200):
        try:
            pid = os.fork()
        except BlockingIOError:
            refused += 1
            continue
        if pid == 0:
            time.sleep(0.2)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    print(len(children), refused)
    """
)


@pytest.mark.skipif(not HAS_PIDS_CGROUP, reason=f"no pids cgroup here: {_PROBLEMS.get('pids')}")
@pytest.mark.parametrize("mode", ["readOnly", "none"])
async def test_a_fork_loop_under_pids_64_is_contained_reported_and_reaped(
    start_server: StartServer, no_leftover_processes: None, mode: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            events = await client.run(
                "forks", [_python(mode), "-c", FORK_LOOP], cwd="/", sandbox={"mode": mode}, limits={"pids": 64}
            )
            exited = _exited(events)
            assert exited["exitCode"] == 0, output_of(events, "stderr")
            started, refused = map(int, output_of(events).split())
            # The python itself is one of the 64; every fork beyond them was refused.
            assert started <= 63 and refused >= 200 - 63
            assert exited["limitExceeded"] == "pids"
            assert {"blocker": "limit.pids", "target": "64"} in exited["denials"]
            # The host is unaffected: the next command (no limit) forks freely.
            unlimited = [sys.executable, "-c", FORK_LOOP.replace("200", "80")]
            free = _exited(await client.run("free", unlimited, cwd="/", sandbox={"mode": "none"}))
            assert free["exitCode"] == 0 and free["limitExceeded"] is None
        await running.server.shutdown(grace=0)
    with trio.fail_after(CGROUPS_GONE_S):
        await _command_cgroups_gone()


ORPHANS: Final = textwrap.dedent(
    """
    import os, time
    for _ in range(10):
        if os.fork() == 0:
            os.setsid()  # leaves the process group: only the cgroup still holds it
            os.close(1); os.close(2)
            time.sleep(600)
            os._exit(0)
    print("parent done")
    """
)


@pytest.mark.skipif(not HAS_PIDS_CGROUP, reason=f"no pids cgroup here: {_PROBLEMS.get('pids')}")
async def test_what_a_limited_command_leaves_behind_is_killed_when_it_closes(
    start_server: StartServer, no_leftover_processes: None
) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            argv = [sys.executable, "-c", ORPHANS]
            events = await client.run("orphans", argv, cwd="/", sandbox={"mode": "none"}, limits={"pids": 64})
            assert output_of(events) == b"parent done\n"
            assert _exited(events)["limitExceeded"] is None
            # The sleepers were in the command's cgroup: killed when it closed, and the
            # cgroup is removed once they are reaped (no_leftover_processes checks that
            # nothing of them still runs).
            while _own_command_cgroups():
                await trio.sleep(0.05)  # a kernel state with no event to wait on


@pytest.mark.parametrize("mode", ["readOnly", "none"])
async def test_cpu_seconds_kills_with_sigxcpu_and_is_reported_as_cpu(
    start_server: StartServer, no_leftover_processes: None, mode: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            events = await client.run(
                "spin", [_python(mode), "-c", "while True: pass"], cwd="/",
                sandbox={"mode": mode}, limits={"cpuSeconds": 1},  # fmt: skip
            )
            exited = _exited(events)
            assert exited["signal"] == "SIGXCPU"
            assert exited["limitExceeded"] == "cpu"
            assert {"blocker": "limit.cpu", "target": "1"} in exited["denials"]
            # It really spent the CPU (wait4's figure trails the runtime the limit counts, by up to ~20%).
            assert exited["usage"]["userCpuMs"] + exited["usage"]["systemCpuMs"] >= 500


async def test_a_command_that_ignores_sigxcpu_is_killed_at_the_hard_limit_and_reported(
    start_server: StartServer, no_leftover_processes: None
) -> None:
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass"
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            argv = [sys.executable, "-c", code]
            events = await client.run("stubborn", argv, cwd="/", sandbox={"mode": "none"}, limits={"cpuSeconds": 1})
            exited = _exited(events)
            assert exited["signal"] == "SIGKILL"
            assert exited["limitExceeded"] == "cpu"


async def test_file_size_kills_with_sigxfsz_and_is_reported(
    start_server: StartServer, no_leftover_processes: None, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            argv = ["dd", "if=/dev/zero", f"of={tmp_path / 'big'}", "bs=1024", "count=64"]
            limits = {"fileSizeBytes": 4096}
            params: dict[str, Any] = {"cwd": str(tmp_path), "sandbox": {"mode": "none"}, "limits": limits}
            events = await client.run("dd", argv, **params)
            exited = _exited(events)
            assert exited["signal"] == "SIGXFSZ"
            assert exited["limitExceeded"] == "fileSize"
            assert {"blocker": "limit.fileSize", "target": "4096"} in exited["denials"]
            assert (tmp_path / "big").stat().st_size == 4096
            # Under the limit: written whole, nothing reported.
            argv[-1] = "count=2"
            ok = _exited(await client.run("dd-small", argv, **params))
            assert ok["exitCode"] == 0 and ok["limitExceeded"] is None


@pytest.mark.parametrize("mode", ["readOnly", "none"])
async def test_open_files_and_the_operator_defaults_reach_the_command(
    start_server: StartServer, no_leftover_processes: None, mode: str
) -> None:
    probe = "import resource as r\nprint(*(r.getrlimit(n) for n in (r.RLIMIT_NOFILE, r.RLIMIT_CPU, r.RLIMIT_FSIZE)))"
    with trio.fail_after(TIMEOUT_S):
        ceilings = ResourceLimits(open_files=200, cpu_seconds=30, file_size_bytes=1 << 20)
        running = await _serve(start_server, limits=ceilings)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            caps = client.initialize_result["capabilities"]["sandbox"]  # type: ignore[index]
            assert caps["limitCeilings"] == {"cpuSeconds": 30, "fileSizeBytes": 1 << 20, "openFiles": 200}
            # No limits in the request: the operator's values apply.
            events = await client.run("defaults", [_python(mode), "-c", probe], cwd="/", sandbox={"mode": mode})
            assert output_of(events) == b"(200, 200) (30, 31) (1048576, 1048576)\n"
            # Lower values of the request win.
            events = await client.run(
                "lower", [_python(mode), "-c", probe], cwd="/", sandbox={"mode": mode},
                limits={"openFiles": 64, "cpuSeconds": 5, "fileSizeBytes": 1000},
            )  # fmt: skip
            assert output_of(events) == b"(64, 64) (5, 6) (1000, 1000)\n"


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("memoryBytes", 512 * MIB, "--limit-memory"),
        ("pids", 129, "--limit-pids"),
        ("cpuSeconds", 11, "--limit-cpu-seconds"),
        ("fileSizeBytes", 1 << 21, "--limit-file-size"),
        ("openFiles", 1025, "--limit-open-files"),
    ],
)
async def test_a_limit_above_the_ceiling_is_refused_naming_the_flag(
    start_server: StartServer, field: str, value: int, flag: str
) -> None:
    ceilings = ResourceLimits(
        memory_bytes=256 * MIB, pids=128, cpu_seconds=10, file_size_bytes=1 << 20, open_files=1024
    )
    if not (HAS_MEMORY_CGROUP and HAS_PIDS_CGROUP):
        ceilings = attrs.evolve(ceilings, memory_bytes=None, pids=None)
        if field in ("memoryBytes", "pids"):
            pytest.skip("no memory/pids cgroup here")
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server, limits=ceilings)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            error = await client.expect_error(
                "process/start",
                {"processId": "p", "argv": ["true"], "sandbox": {"mode": "none"}, "limits": {field: value}},
                SANDBOX_UNAVAILABLE,
            )
            assert flag in error.message and f"limits.{field}" in error.message
            assert client.events == []


async def test_a_limit_the_host_cannot_enforce_is_refused(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The detection seam: a host without usable cgroups (this one may well have them).
    problems = {"memory": "no memory controller (test)", "pids": "no pids controller (test)"}
    monkeypatch.setattr(_limits, "detect_cgroups", lambda: (None, problems))
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            caps = client.initialize_result["capabilities"]["sandbox"]  # type: ignore[index]
            assert caps["limits"] == ["cpuSeconds", "fileSizeBytes", "openFiles"]
            for mode in ("readOnly", "none"):
                for field, value in (("memoryBytes", 256 * MIB), ("pids", 64)):
                    error = await client.expect_error(
                        "process/start",
                        {"processId": "p", "argv": ["true"], "sandbox": {"mode": mode}, "limits": {field: value}},
                        SANDBOX_UNAVAILABLE,
                    )
                    assert f"limits.{field} cannot be enforced here" in error.message
                    assert problems[field.removesuffix("Bytes")] in error.message
            assert client.events == []


async def test_an_operator_default_the_host_cannot_enforce_fails_every_request_closed(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_limits, "detect_cgroups", lambda: (None, {"memory": "none here", "pids": "none here"}))
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server, limits=ResourceLimits(memory_bytes=256 * MIB))
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            error = await client.expect_error(
                "process/start", {"processId": "p", "argv": ["true"], "sandbox": {"mode": "none"}}, SANDBOX_UNAVAILABLE
            )
            assert "limits.memoryBytes cannot be enforced" in error.message


@pytest.mark.parametrize(
    "limits",
    [
        {"memoryBytes": 0},
        {"memoryBytes": 1000},  # below the floor
        {"pids": -1},
        {"pids": True},
        {"cpuSeconds": 1.5},
        {"fileSizeBytes": "4096"},
        {"openFiles": 3},
        {"openFiles": 1 << 30},
        {"memory": 1},
        [],
    ],
)
async def test_malformed_limits_are_invalid_params(start_server: StartServer, limits: Any) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            error = await client.expect_error(
                "process/start", {"processId": "p", "argv": ["true"], "limits": limits}, INVALID_PARAMS
            )
            assert "$.params.limits" in error.message


# --- ceilings ------------------------------------------------------------------------------


async def test_max_sandbox_refuses_a_more_permissive_mode_naming_the_ceiling(start_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server, max_mode=SandboxMode.READ_ONLY)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            caps = client.initialize_result["capabilities"]["sandbox"]  # type: ignore[index]
            assert caps["modes"] == ["readOnly"] and caps["maxMode"] == "readOnly"
            for mode in ("workspaceWrite", "none"):
                start = {"processId": "p", "argv": ["true"], "cwd": "/tmp", "sandbox": {"mode": mode}}
                error = await client.expect_error("process/start", start, SANDBOX_UNAVAILABLE)
                assert f'mode "{mode}"' in error.message and "--max-sandbox readOnly" in error.message
            ok = _exited(await client.run("ok", ["true"], cwd="/", sandbox={"mode": "readOnly"}))
            assert ok["exitCode"] == 0


def test_a_callers_ceiling_narrows_the_servers() -> None:
    sandbox = Sandbox.create(attrs.evolve(LIMITS_SETTINGS, max_mode=SandboxMode.WORKSPACE_WRITE))
    write = SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE)
    assert sandbox.resolve(write) == write
    assert sandbox.resolve(write, max_mode=SandboxMode.NONE) == write  # cannot widen the server's
    with pytest.raises(SandboxUnavailable, match="client's ceiling .max sandbox readOnly"):
        sandbox.resolve(write, max_mode=SandboxMode.READ_ONLY)
    with pytest.raises(SandboxUnavailable, match="--max-sandbox workspaceWrite"):
        sandbox.resolve(SandboxPolicy(mode=SandboxMode.NONE), max_mode=SandboxMode.NONE)


async def test_writable_roots_within_refuses_paths_outside_after_resolving_symlinks(
    start_server: StartServer, no_leftover_processes: None, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "ws").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)  # inside by name, outside in fact
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server, writable_roots_within=(str(allowed),))
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            refused = [
                {"cwd": str(outside)},
                {"cwd": str(allowed / "escape")},
                {"cwd": str(allowed / "ws"), "writableRoots": [str(outside)]},
                {"cwd": str(allowed / "ws"), "writableRoots": [str(allowed / "escape")]},
                {"cwd": str(tmp_path)},  # the parent of the ceiling is not inside it
            ]
            for case in refused:
                roots = case.pop("writableRoots", [])
                error = await client.expect_error(
                    "process/start",
                    {
                        "processId": "p",
                        "argv": ["true"],
                        **case,
                        "sandbox": {"mode": "workspaceWrite", "writableRoots": roots},
                    },
                    SANDBOX_UNAVAILABLE,
                )
                assert "--writable-roots-within" in error.message and str(outside.parent) in error.message
            ok = _exited(
                await client.run(
                    "ok", ["true"], cwd=str(allowed / "ws"),
                    sandbox={"mode": "workspaceWrite", "writableRoots": [str(allowed)]},
                )  # fmt: skip
            )
            assert ok["exitCode"] == 0
            # readOnly grants no writable path: the ceiling does not apply to its cwd.
            read_only = await client.run("ro", ["true"], cwd=str(outside), sandbox={"mode": "readOnly"})
            assert _exited(read_only)["exitCode"] == 0


async def test_network_is_refused_without_allow_network(start_server: StartServer, no_leftover_processes: None) -> None:
    with trio.fail_after(TIMEOUT_S):
        running = await _serve(start_server)
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            assert client.initialize_result["capabilities"]["sandbox"]["networkAllowed"] is False  # type: ignore[index]
            for mode in ("readOnly", "workspaceWrite", "none"):
                error = await client.expect_error(
                    "process/start",
                    {"processId": "p", "argv": ["true"], "cwd": "/tmp", "sandbox": {"mode": mode, "network": True}},
                    SANDBOX_UNAVAILABLE,
                )
                assert "--allow-network" in error.message
        allowing = await _serve(start_server, allow_network=True)
        async with open_raw_client(allowing.url, allowing.token) as client:
            await client.initialize()
            ok = _exited(await client.run("net", ["true"], cwd="/", sandbox={"mode": "readOnly", "network": True}))
            assert ok["exitCode"] == 0


# --- finding the hierarchies (sans kernel) ----------------------------------------------------

HYBRID_MOUNTINFO: Final = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP: Final = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"


def test_a_hybrid_host_uses_the_v1_hierarchies_when_v2_has_no_controllers() -> None:
    found = _cgroup.parse_hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP, lambda _dir: frozenset({"hugetlb"}))
    assert found == {
        "memory": _cgroup.Hierarchy(1, "/sys/fs/cgroup/memory/process_api/abc", frozenset({"memory"})),
        "pids": _cgroup.Hierarchy(1, "/sys/fs/cgroup/pids", frozenset({"pids"})),
    }


def test_v2_wins_when_it_has_the_controllers_and_the_mount_root_is_honoured() -> None:
    mountinfo = HYBRID_MOUNTINFO + "50 31 0:40 /system.slice /mnt/cg2 rw - cgroup2 cgroup2 rw\n"
    cgroup = "4:memory:/x\n0::/system.slice/exec.service\n"
    seen: list[str] = []

    def controllers(directory: str) -> frozenset[str]:
        seen.append(directory)
        return frozenset({"memory", "pids", "cpu"}) if directory == "/mnt/cg2/exec.service" else frozenset()

    found = _cgroup.parse_hierarchies(mountinfo, cgroup, controllers)
    v2 = _cgroup.Hierarchy(2, "/mnt/cg2/exec.service", frozenset({"memory", "pids"}))
    assert found == {"memory": v2, "pids": v2}
    assert "/sys/fs/cgroup/unified/system.slice/exec.service" in seen


def test_a_cgroup_outside_the_mounted_subtree_is_not_used() -> None:
    mountinfo = "35 31 0:32 /other /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert _cgroup.parse_hierarchies(mountinfo, "4:memory:/process_api/abc\n", lambda _d: frozenset()) == {}


@pytest.mark.skipif(not HAS_PIDS_CGROUP, reason=f"no pids cgroup here: {_PROBLEMS.get('pids')}")
def test_stale_command_cgroups_of_a_dead_server_are_removed_and_live_ones_kept() -> None:
    assert CGROUPS is not None
    own = CGROUPS.hierarchies[_cgroup.PIDS].own
    # pid 2**22 + 1 is above PID_MAX_LIMIT: no process has it, so its server is dead.
    namespace = _cgroup.pid_namespace()
    stale = os.path.join(own, f"{_cgroup.PREFIX}{namespace}.{(1 << 22) + 1}.12345.1")
    # The same dead pid in another pid namespace: not ours to judge.
    foreign = os.path.join(own, f"{_cgroup.PREFIX}1{namespace}.{(1 << 22) + 1}.12345.1")
    mine = CGROUPS.create(None, 10)
    os.mkdir(stale)
    os.mkdir(foreign)
    try:
        _cgroup.sweep_stale([CGROUPS.hierarchies[_cgroup.PIDS]])
        assert not os.path.exists(stale)
        assert os.path.isdir(foreign)
        assert all(os.path.isdir(directory) for directory in mine.directories)
    finally:
        mine.close()
        for directory in (stale, foreign):
            if os.path.exists(directory):
                os.rmdir(directory)
    assert not any(os.path.exists(directory) for directory in mine.directories)


# --- the launcher's limit flags -------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rlimit", "as=1:1"], b"unknown --rlimit"),
        (["--rlimit", "cpu=2:1"], b"bad value for --rlimit"),
        (["--rlimit", "cpu=0:1"], b"bad value for --rlimit"),
        (["--rlimit", "cpu=1"], b"NAME=SOFT:HARD"),
        (["--cgroup", "relative/dir"], b"not absolute"),
        (["--cgroup", "/nonexistent-cgroup-dir"], b"cgroup.procs"),
        (["--rlimit"], b"NAME=SOFT:HARD"),  # the next flag is taken as its value, and refused
    ],
)
async def test_bad_limit_flags_are_a_setup_failure_and_nothing_runs(flags: list[str], message: bytes) -> None:
    from exec_server.sandbox import find_launcher

    with trio.fail_after(TIMEOUT_S):
        result = await trio.run_process(
            [find_launcher().path, *flags, "--limits-only", "--", "echo", "ran"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 125 and result.stdout == b""
    assert message in result.stderr


# --- the serve flags --------------------------------------------------------------------------


def _serve_args(*flags: str) -> Any:
    from exec_server import _cli

    return _cli._parser().parse_args(["serve", *flags])


def test_the_serve_flags_become_sandbox_settings() -> None:
    from exec_server import _cli

    args = _serve_args(
        "--max-sandbox", "workspaceWrite", "--writable-roots-within", "/tmp", "--writable-roots-within", "/var/tmp", "--allow-network",
        "--limit-memory", "256M", "--limit-pids", "64", "--limit-cpu-seconds", "30",
        "--limit-file-size", "1GiB", "--limit-open-files", "512",
    )  # fmt: skip
    settings = _cli._config(args, "t" * 32).sandbox
    assert settings.max_mode is SandboxMode.WORKSPACE_WRITE
    assert settings.writable_roots_within == (os.path.realpath("/tmp"), os.path.realpath("/var/tmp"))
    assert settings.allow_network is True
    assert settings.limits == ResourceLimits(
        memory_bytes=256 * MIB, pids=64, cpu_seconds=30, file_size_bytes=1 << 30, open_files=512
    )
    defaults = _cli._config(_serve_args(), "t" * 32).sandbox
    assert (defaults.max_mode, defaults.allow_network, defaults.limits) == (SandboxMode.NONE, False, ResourceLimits())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sandbox", "workspaceWrite", "--max-sandbox", "readOnly"], "workspaceWrite is above --max-sandbox"),
        (["--limit-open-files", "3"], "--limit-open-files: must be between"),
        (["--limit-memory", "1000"], "--limit-memory: must be between"),
    ],
)
def test_contradictory_or_out_of_range_serve_flags_are_refused(
    flags: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from exec_server import _cli

    monkeypatch.setenv("EXEC_SERVER_TOKEN", "t" * 32)
    assert _cli.main(["serve", "--listen", "ws://127.0.0.1:0", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


# --- the client's record ------------------------------------------------------------------------


def test_the_terminal_record_says_which_limit_was_hit_whether_pushed_or_read() -> None:
    import protocol as p

    denial = p.Denial(blocker="limit.memory", target=str(256 * MIB))
    exited = p.ExitedEvent(
        process_id="big", seq=1, exit_code=137, signal="SIGKILL", timed_out=False, sandbox_denied=True,
        denials=(denial,), sandbox_denied_source="audit", limit_exceeded="memory",
    )  # fmt: skip
    pushed = p.Assembler("big", ("python3",))
    pushed.begin()
    pushed.event(exited)
    progress = pushed.event(p.ClosedEvent(process_id="big", seq=2))
    assert isinstance(progress.action, p.Complete)
    assert progress.action.record.limit_exceeded == "memory" and progress.action.record.denials == (denial,)

    read = p.Assembler("big", ("python3",))
    read.begin()
    progress = read.event(p.ClosedEvent(process_id="big", seq=2))  # exited never arrived
    assert isinstance(progress.action, p.NeedRead)
    progress = read.read_result(
        p.ReadResult(
            chunks=(), next_seq=3, exited=True, closed=True, exit_code=137, signal="SIGKILL", sandbox_denied=True,
            last_seq=2, denials=(denial,), sandbox_denied_source="audit", limit_exceeded="memory",
        )  # fmt: skip
    )
    assert isinstance(progress.action, p.Complete)
    assert progress.action.record.limit_exceeded == "memory"


def test_an_unprivileged_server_cannot_raise_its_own_hard_rlimits(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = _limits.ResourceLimiter(ResourceLimits(), None, {})
    monkeypatch.setattr(_limits.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(_limits.resource, "getrlimit", lambda _which: (1024, 4096))
    assert limiter.resolve(ResourceLimits(open_files=4096)).open_files == 4096
    with pytest.raises(SandboxUnavailable, match="limits.openFiles 4097 is above this server's own hard limit 4096"):
        limiter.resolve(ResourceLimits(open_files=4097))
    # cpuSeconds needs one second more for its SIGKILL.
    with pytest.raises(SandboxUnavailable, match="limits.cpuSeconds 4096 is above"):
        limiter.resolve(ResourceLimits(cpu_seconds=4096))


@pytest.mark.skipif(not HAS_MEMORY_CGROUP, reason=f"no memory cgroup here: {_PROBLEMS.get('memory')}")
async def test_the_cli_server_enforces_its_flags(tmp_path: Path, no_leftover_processes: None) -> None:
    token_file = tmp_path / "token"
    args = [
        "serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(token_file), "--audit-denials", "off",
        "--allow-unsandboxed", "--max-sandbox", "readOnly", "--limit-memory", "256M", "--limit-cpu-seconds", "20",
    ]  # fmt: skip
    with trio.fail_after(TIMEOUT_S):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, token_file.read_text().strip()) as client:
                await client.initialize()
                caps = client.initialize_result["capabilities"]["sandbox"]  # type: ignore[index]
                assert caps["maxMode"] == "readOnly" and caps["modes"] == ["readOnly"]
                assert caps["limitCeilings"] == {"memoryBytes": 256 * MIB, "cpuSeconds": 20}
                start = {"processId": "w", "argv": ["true"], "cwd": "/tmp", "sandbox": {"mode": "workspaceWrite"}}
                error = await client.expect_error("process/start", start, SANDBOX_UNAVAILABLE)
                assert "--max-sandbox readOnly" in error.message
                # The operator's memory limit applies to a request that names none.
                argv = [SYSTEM_PYTHON, "-c", "b = b'x' * (1 << 30)"]
                exited = _exited(await client.run("big", argv, cwd="/"))
                assert exited["limitExceeded"] == "memory"
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


def test_the_v2_files_a_command_cgroup_is_made_and_judged_by(tmp_path: Path) -> None:
    # This host's memory and pids controllers are v1: the v2 file protocol is checked on a
    # plain directory standing in for a delegated v2 cgroup (the kernel side is not).
    hierarchy = _cgroup.Hierarchy(2, str(tmp_path), frozenset({"memory", "pids"}))
    (tmp_path / "cgroup.subtree_control").write_text("")
    _cgroup._enable_v2(hierarchy)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    pool = _cgroup.CgroupPool({"memory": hierarchy, "pids": hierarchy})
    command = pool.create(256 * MIB, 64)
    [directory] = command.directories  # one directory holds both controllers
    made = Path(directory)
    assert (made / "memory.max").read_text() == str(256 * MIB)
    assert (made / "memory.oom.group").read_text() == "1"
    assert (made / "pids.max").read_text() == "64"
    limits = _limits.CommandLimits(ResourceLimits(memory_bytes=256 * MIB, pids=64), (), command)
    assert limits.verdict(None, 0.0) == _limits.NOTHING_HIT
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n")
    (made / "pids.events").write_text("max 3\n")
    verdict = limits.verdict(signal.SIGKILL, 0.1)
    assert verdict.exceeded == "memory"
    assert [denial.blocker for denial in verdict.denials] == ["limit.memory", "limit.pids"]
