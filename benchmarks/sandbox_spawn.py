"""Spawn cost of the sandbox launcher: ``/bin/true`` plain vs through the launcher.

Run: ``python benchmarks/sandbox_spawn.py [--runs 300] [--rss-mib 1024]``

Every variant is a ``subprocess.Popen`` on CPython's vfork path, exactly as the server
spawns (new process group, no ``preexec_fn``), waited for to completion. Variants are
interleaved round-robin so drift (frequency scaling, other load) hits them equally. The
whole set is measured twice: with this process small, and again while it holds
``--rss-mib`` of touched heap (fork would copy its page tables; vfork does not).

Variants:
  plain                     /bin/true
  launcher readOnly net=1   Landlock + no_new_privs (+ uid drop as root), no netns
  launcher readOnly net=0   the default policy: + empty network namespace + seccomp
                            (a root server joins one shared empty netns: setns)
    same, netns per command unshare(CLONE_NEWNET) per command instead (non-root servers
                            always do this, with a user namespace)
  prepare+launcher net=0    the same, including ``Sandbox.prepare`` (what a request costs)
  workspaceWrite net=0      + the private temp dir (mkdtemp, chown, rmtree)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exec_server.sandbox import Sandbox, SandboxSettings, find_launcher  # noqa: E402
from protocol import SandboxMode, SandboxPolicy  # noqa: E402

TRUE: Final = "/bin/true"
ENV: Final = {"PATH": "/usr/bin:/bin"}


def _spawn(argv: list[str], cwd: str, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        pass_fds=pass_fds,
        process_group=0,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]}... exited {proc.returncode}")


def _variants(sandbox: Sandbox, cwd: str) -> dict[str, Callable[[], None]]:
    read_only = SandboxPolicy(mode=SandboxMode.READ_ONLY)
    with_net = SandboxPolicy(mode=SandboxMode.READ_ONLY, network=True)
    workspace = SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE)
    fixed_net0 = sandbox.prepare(read_only, [TRUE], cwd, dict(ENV))
    fixed_net1 = sandbox.prepare(with_net, [TRUE], cwd, dict(ENV))
    # The same policy with a network namespace created (and destroyed) per command.
    per_process = Sandbox(sandbox.settings, sandbox.kernel, find_launcher())
    fixed_unshare = per_process.prepare(read_only, [TRUE], cwd, dict(ENV))

    def prepared(policy: SandboxPolicy) -> Callable[[], None]:
        def run() -> None:
            plan = sandbox.prepare(policy, [TRUE], cwd, dict(ENV))
            try:
                _spawn(plan.argv, cwd, plan.env, plan.pass_fds)
            finally:
                plan.cleanup()

        return run

    return {
        "plain": lambda: _spawn([TRUE], cwd, dict(ENV)),
        "launcher readOnly net=1": lambda: _spawn(fixed_net1.argv, cwd, fixed_net1.env, fixed_net1.pass_fds),
        "launcher readOnly net=0": lambda: _spawn(fixed_net0.argv, cwd, fixed_net0.env, fixed_net0.pass_fds),
        "  same, netns per command": lambda: _spawn(fixed_unshare.argv, cwd, fixed_unshare.env, fixed_unshare.pass_fds),
        "prepare+launcher net=0": prepared(read_only),
        "workspaceWrite net=0": prepared(workspace),
    }


def measure(variants: dict[str, Callable[[], None]], runs: int) -> dict[str, list[float]]:
    """Milliseconds per spawn, per variant, interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up: page cache, dentries, first netns
        for _ in range(5):
            run()
    for _ in range(runs):
        for name, run in variants.items():
            start = time.perf_counter_ns()
            run()
            samples[name].append((time.perf_counter_ns() - start) / 1e6)
    return samples


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _table(title: str, samples: dict[str, list[float]]) -> str:
    plain = statistics.median(samples["plain"])
    lines = [f"### {title} (RSS {_rss_mib():.0f} MiB)", ""]
    lines += ["| variant | median ms | p90 ms | x plain |", "|---|---|---|---|"]
    for name, values in samples.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        lines.append(f"| {name} | {median:.3f} | {p90:.3f} | {median / plain:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rss-mib", type=int, default=1024)
    args = parser.parse_args()

    sandbox = Sandbox.create(SandboxSettings(audit_denials="off"))
    if not sandbox.available:
        raise SystemExit(f"sandbox unavailable: {sandbox.unavailable_reason}")
    cwd = tempfile.mkdtemp(prefix="sandbox-bench-", dir="/tmp")
    os.chmod(cwd, 0o755)
    abi = sandbox.kernel.landlock_abi
    load = os.getloadavg()[0]
    print(f"kernel {os.uname().release}, Landlock ABI {abi}, euid {os.geteuid()}, runs {args.runs}, load {load:.1f}")
    variants = _variants(sandbox, cwd)
    print(_table("small server", measure(variants, args.runs)))
    heap = bytearray(args.rss_mib << 20)
    heap[::4096] = b"\x01" * len(range(0, len(heap), 4096))  # touch every page: real RSS
    print()
    print(_table(f"server holding {args.rss_mib} MiB", measure(variants, args.runs)))
    del heap
    os.rmdir(cwd)


if __name__ == "__main__":
    main()
