"""The client on each event loop, and the CLI's cold start, measured side by side in one run.

- **One-shot latency per flavor**: ``/usr/bin/true`` through ``exec_client`` from a trio
  program, an ``asyncio.run`` program that never imports trio (it asserts so), and the sync
  client. Each flavor is a child process of its own (its own interpreter, as a user's
  program would be), against the same server; the children run in alternating batches so
  machine drift lands on every arm alike. Each child times ``client.run`` itself.
- **Cold start**: the whole ``exec-client run -- /usr/bin/true`` (interpreter start, imports,
  connect, run, exit) next to a bare ``python3 -c pass``, interleaved, two ways: as shipped
  (after a first call, through the control master it started: ``exec_client/_control.py``)
  and each call on its own (``--control-persist 0``).

Run alone: ``python -m benchmarks._client_flavors`` (starts its own server).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Final

import attrs

from ._report import Section, fmt_ms
from ._servers import REPO_ROOT

FLAVORS: Final = ("trio", "asyncio", "sync")
TRUE: Final = "/usr/bin/true"

# The child program: time N one-shot runs on one client and print the samples as JSON.
_CHILD: Final = r"""
import json, sys, time
flavor, url, token, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
samples = []
if flavor == "sync":
    import exec_client
    with exec_client.connect(url, token=token, client_name="bench-sync") as client:
        client.run(["/usr/bin/true"])  # warm-up
        for _ in range(count):
            start = time.perf_counter()
            record = client.run(["/usr/bin/true"])
            samples.append(time.perf_counter() - start)
            assert record.exit_code == 0 and record.failure is None, record
else:
    import exec_client

    async def main():
        async with exec_client.open_client(url, token=token, client_name="bench-" + flavor) as client:
            await client.run(["/usr/bin/true"])  # warm-up
            for _ in range(count):
                start = time.perf_counter()
                record = await client.run(["/usr/bin/true"])
                samples.append(time.perf_counter() - start)
                assert record.exit_code == 0 and record.failure is None, record

    if flavor == "asyncio":
        import asyncio
        asyncio.run(main())
        assert "trio" not in sys.modules, "the asyncio program imported trio"
    else:
        import trio
        trio.run(main)
print(json.dumps(samples))
"""


@attrs.frozen
class FlavorResult:
    p50: dict[str, float]
    cold_p50: float  # as shipped: through the control master
    own_p50: float  # --control-persist 0: every call imports and connects by itself
    bare_p50: float
    samples: dict[str, list[float]]
    # `python -X importtime` of one CLI call: (module, cumulative µs, self µs), heaviest first.
    imports: list[tuple[str, int, int]] = attrs.Factory(list)
    imports_total_us: int = 0

    @property
    def asyncio_over_trio(self) -> float:
        return self.p50["asyncio"] / self.p50["trio"]

    @property
    def cold_over_bare(self) -> float:
        return self.cold_p50 / self.bare_p50

    @property
    def own_over_bare(self) -> float:
        return self.own_p50 / self.bare_p50


def _env(token: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXEC_SERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["EXEC_SERVER_TOKEN"] = token
    # As installed for users: bytecode is cached (the warm-up call writes what is missing).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _flavor_batch(flavor: str, url: str, token: str, count: int) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, flavor, url, token, str(count)],
        env=_env(token),
        capture_output=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{flavor} arm failed: {done.stderr.decode(errors='replace')[-2000:]}")
    samples: list[float] = json.loads(done.stdout)
    return samples


def _wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=60)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def measure(url: str, token: str, *, batches: int, per_batch: int, cold_runs: int) -> FlavorResult:
    """Alternate the flavors' batches (rotating who goes first), then the cold-start pairs."""
    samples: dict[str, list[float]] = {flavor: [] for flavor in FLAVORS}
    for batch in range(batches):
        order = FLAVORS[batch % len(FLAVORS) :] + FLAVORS[: batch % len(FLAVORS)]
        for flavor in order:
            samples[flavor] += _flavor_batch(flavor, url, token, per_batch)
    runtime = tempfile.mkdtemp(prefix="xc-")  # the control master's socket: ours, short
    env = {**_env(token), "XDG_RUNTIME_DIR": runtime}
    env.pop("EXEC_CLIENT_CONTROL_PERSIST", None)  # as shipped
    cli = [sys.executable, "-m", "exec_client", "run", "--url", url, "--", TRUE]
    own = [*cli[:6], "--control-persist", "0", *cli[6:]]
    bare = [sys.executable, "-c", "pass"]
    cold: list[float] = []
    alone: list[float] = []
    plain: list[float] = []
    try:
        _wall(own, env)  # page cache and .pyc files warm, like a build tool's second call
        _wall(cli, env)  # ... and the control master started, as the first call starts it
        _await_master(runtime)
        for _ in range(cold_runs):
            cold.append(_wall(cli, env))
            alone.append(_wall(own, env))
            plain.append(_wall(bare, env))
    finally:
        subprocess.run([*cli[:3], "control", "stop", "--url", url], env=env, capture_output=True, check=False, timeout=60)
        shutil.rmtree(runtime, ignore_errors=True)
    imports, total = import_times(own, env)
    return FlavorResult(
        p50={flavor: statistics.median(values) for flavor, values in samples.items()},
        cold_p50=statistics.median(cold),
        own_p50=statistics.median(alone),
        bare_p50=statistics.median(plain),
        samples=samples,
        imports=imports,
        imports_total_us=total,
    )


def _await_master(runtime: str, timeout: float = 30.0) -> None:
    """Until the control master the warm-up call started takes connections."""
    deadline = time.monotonic() + timeout
    directory = os.path.join(runtime, "exec-client")
    while time.monotonic() < deadline:
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            if name.endswith(".sock"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    try:
                        probe.connect(os.path.join(directory, name))
                        return
                    except OSError:
                        pass
        time.sleep(0.02)
    raise RuntimeError("the CLI's control master did not start")


def import_times(cli: list[str], env: dict[str, str]) -> tuple[list[tuple[str, int, int]], int]:
    """Where the CLI's start-up goes: ``-X importtime`` of one call, the top-level imports'
    cumulative times and those of the two levels below them, and the top level's total."""
    done = subprocess.run(
        [cli[0], "-X", "importtime", *cli[1:]], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=60
    )
    top_level: list[tuple[str, int, int]] = []
    parents: dict[int, str] = {}  # depth -> the latest import seen at that depth
    # importtime prints an import after everything it imported: read it backwards, parents first.
    for line in reversed(done.stderr.decode(errors="replace").splitlines()):
        fields = line.removeprefix("import time:").split("|", 2)
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # not an import line, or the header
        name = fields[2].removeprefix(" ")
        depth = (len(name) - len(name.lstrip(" "))) // 2  # nested imports are indented under their importer
        name = name.strip()
        parents[depth] = name
        if depth <= 2:
            label = name if depth == 0 else f"{name} (in {parents.get(depth - 1, '?')})"
            top_level.append((label, int(fields[1]), int(fields[0])))
    total = sum(row[1] for row in top_level if " (in " not in row[0])
    return sorted(top_level, key=lambda row: row[1], reverse=True), total


def section(result: FlavorResult, *, batches: int, per_batch: int, cold_runs: int) -> Section:
    out = Section("Client flavors and CLI cold start")
    table = out.table("flavor", "p50 ms", "vs trio", caption=f"One-shot `{TRUE}`, {batches} alternating batches × {per_batch} calls per flavor")
    for flavor in FLAVORS:
        table.add(flavor, fmt_ms(result.p50[flavor] * 1000), f"{result.p50[flavor] / result.p50['trio']:.2f}×")
    cold = out.table("command", "p50 ms", caption=f"Whole-process wall time, {cold_runs} interleaved pairs")
    cold.add(f"`exec-client run -- {TRUE}` (as shipped: through the control master)", fmt_ms(result.cold_p50 * 1000))
    cold.add(f"`exec-client run --control-persist 0 -- {TRUE}` (on its own)", fmt_ms(result.own_p50 * 1000))
    cold.add("`python3 -c pass`", fmt_ms(result.bare_p50 * 1000))
    if result.imports:
        imports = out.table(
            "import (top level)", "cumulative ms", "self ms",
            caption=f"`python -X importtime` of one CLI call on its own: {result.imports_total_us / 1000:.0f} ms of imports in all; "
            "the heaviest, nested ones with their importer",
        )  # fmt: skip
        for name, cumulative, self_us in result.imports[:16]:
            imports.add(f"`{name}`", f"{cumulative / 1000:.1f}", f"{self_us / 1000:.1f}")
    out.note(
        f"asyncio/trio p50 ratio {result.asyncio_over_trio:.2f}× (target ≤ 1.2×); the asyncio child asserts "
        f"that trio was never imported. CLI cold start {result.cold_over_bare:.2f}× bare Python through the control "
        f"master (target ≤ 4×), {result.own_over_bare:.2f}× on its own."
    )
    return out


def main() -> None:
    from ._servers import server_process

    with server_process() as server:
        result = measure(server.url, server.token, batches=6, per_batch=50, cold_runs=20)
    print(section(result, batches=6, per_batch=50, cold_runs=20).render())


if __name__ == "__main__":
    main()
