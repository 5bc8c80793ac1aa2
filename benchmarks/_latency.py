"""Completion latency of one-shot ``/usr/bin/true``: every arm against the same server, interleaved.

Arms run in a rotating order inside each iteration (arm k goes first in iteration k), so
drift of the machine (page cache, CPU frequency, a noisy neighbour) lands on every arm
alike instead of on whichever arm ran last.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs
import psutil
import trio
import trio_websocket

import protocol as p

from . import _stack_floor
from ._clients import BenchClient, open_bench_client
from ._raw import RawConnection, Spec
from ._report import Section, fmt_ms
from ._servers import ServerAddress
from ._stats import ArmSummary

TRUE: Final = ("/usr/bin/true",)
DEFAULT_ARM: Final = "default"
UNSANDBOXED_ARM: Final = "unsandboxed"
READ_ONLY: Final = p.SandboxPolicy(mode=p.SandboxMode.READ_ONLY)

# One call of an arm: (seconds, process/read calls it made).
Once = Callable[[], Awaitable[tuple[float, int]]]


@attrs.frozen
class Arm:
    name: str
    once: Once
    remote: bool = True


@attrs.define
class ArmResult:
    name: str
    runs: list[list[float]] = attrs.Factory(list)
    reads: int = 0
    calls: int = 0
    error: str | None = None

    @property
    def summary(self) -> ArmSummary:
        return ArmSummary.of(self.runs)

    @property
    def samples(self) -> list[float]:
        return [s for run in self.runs for s in run]


class _Ids:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self._prefix}-{self._next}"


def client_arm(name: str, client: BenchClient, *, sandbox: p.SandboxPolicy | None = None) -> Arm:
    async def once() -> tuple[float, int]:
        start = time.perf_counter()
        record = await client.run(TRUE, sandbox=sandbox)
        elapsed = time.perf_counter() - start
        if record.exit_code != 0 or record.failure is not None:
            raise RuntimeError(f"{name}: incomplete record {record}")
        return elapsed, record.read_calls

    return Arm(name, once)


def raw_pushed_arm(connection: RawConnection) -> Arm:
    ids = _Ids("pr")

    async def once() -> tuple[float, int]:
        spec = Spec(process_id=ids(), argv=TRUE)
        start = time.perf_counter()
        [record] = await connection.run_pushed([spec])
        elapsed = time.perf_counter() - start
        await connection.release([spec.process_id])
        if record.exit_code != 0:
            raise RuntimeError(f"pushed-raw: {record}")
        return elapsed, record.read_calls

    return Arm("pushed-raw", once)


def raw_baseline_arm(name: str, connection: RawConnection, final_read: bool) -> Arm:
    ids = _Ids(name)

    async def once() -> tuple[float, int]:
        spec = Spec(process_id=ids(), argv=TRUE)
        start = time.perf_counter()
        outcome = await (connection.run_final_read(spec) if final_read else connection.run_poll(spec))
        elapsed = time.perf_counter() - start
        await connection.release([spec.process_id])
        if outcome.exit_code != 0 or not outcome.closed:
            raise RuntimeError(f"{name}: {outcome}")
        return elapsed, outcome.read_calls

    return Arm(name, once)


def subprocess_arm() -> Arm:
    async def once() -> tuple[float, int]:
        start = time.perf_counter()
        subprocess.run(TRUE, check=True)  # blocks the loop on purpose: nothing else runs meanwhile
        return time.perf_counter() - start, 0

    return Arm("subprocess.run", once, remote=False)


def trio_process_arm() -> Arm:
    async def once() -> tuple[float, int]:
        start = time.perf_counter()
        await trio.run_process(TRUE)
        return time.perf_counter() - start, 0

    return Arm("trio.run_process", once, remote=False)


async def measure(arms: Sequence[Arm], runs: int, calls: int, *, warmup: int = 3) -> list[ArmResult]:
    """``runs`` runs of ``calls`` interleaved calls per arm (after ``warmup`` untimed calls each).

    An arm whose call fails (on a shared machine the sandbox launcher may be rebuilt under
    us, say) is dropped from then on and its error kept, instead of losing every arm's run.
    """
    results = [ArmResult(arm.name) for arm in arms]
    for arm, result in zip(arms, results, strict=True):
        for _ in range(warmup):
            await _call(arm, result)
    for _ in range(runs):
        samples: list[list[float]] = [[] for _ in arms]
        for i in range(calls):
            for k in range(len(arms)):
                index = (i + k) % len(arms)
                outcome = await _call(arms[index], results[index])
                if outcome is not None:
                    elapsed, reads = outcome
                    samples[index].append(elapsed)
                    results[index].reads += reads
                    results[index].calls += 1
        for result, run in zip(results, samples, strict=True):
            if run:
                result.runs.append(run)
    return results


async def _call(arm: Arm, result: ArmResult) -> tuple[float, int] | None:
    if result.error is not None:
        return None
    try:
        return await arm.once()
    except Exception as exc:  # noqa: BLE001 - reported with the arm's row
        result.error = f"{type(exc).__name__}: {exc}"
        return None


# --- the section ---------------------------------------------------------------------------


@attrs.frozen
class Protocol:
    label: str
    runs: int
    calls: int


@attrs.define
class LatencyOutcome:
    section: Section
    by_protocol: dict[str, list[ArmResult]]
    client_name: str
    sandboxed: bool


async def probe_sandbox(client: BenchClient) -> str | None:
    """None if a readOnly one-shot works, else why not."""
    try:
        record = await client.run(TRUE, sandbox=READ_ONLY)
    except Exception as exc:  # noqa: BLE001 - any refusal means "skip the arm", with the reason
        return f"{type(exc).__name__}: {exc}"
    if record.exit_code != 0 or record.failure is not None:
        return f"readOnly /usr/bin/true did not succeed: exit {record.exit_code}, failure {record.failure}"
    return None


async def cpu_per_call(client: BenchClient, server_pid: int, calls: int) -> tuple[float, float]:
    """CPU seconds per pushed one-shot, (server, this process): less sensitive to a busy machine than wall time."""
    server, me = psutil.Process(server_pid), psutil.Process()

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    server_before, me_before = used(server), used(me)
    for _ in range(calls):
        await client.run(TRUE)
    await trio.sleep(0.05)  # let the server finish the last release
    return (used(server) - server_before) / calls, (used(me) - me_before) / calls


async def run_section(
    default: ServerAddress,
    unsandboxed: ServerAddress,
    protocols: Sequence[Protocol],
    floor_url: str | None = None,
) -> LatencyOutcome:
    """Every arm interleaved in one run: the default server and the unsandboxed one side by side."""
    section = Section("Completion latency (one-shot /usr/bin/true)")
    async with contextlib.AsyncExitStack() as stack:
        # The client as users get it (lossless, binary output), against the server as shipped.
        client = await stack.enter_async_context(open_bench_client(default.url, default.token))
        bare = await stack.enter_async_context(open_bench_client(unsandboxed.url, unsandboxed.token))
        raw = await stack.enter_async_context(RawConnection.open(unsandboxed.url, unsandboxed.token))
        arms = [
            client_arm(DEFAULT_ARM, client),
            client_arm(UNSANDBOXED_ARM, bare),
            raw_pushed_arm(raw),
            raw_baseline_arm("final-read", raw, final_read=True),
            raw_baseline_arm("poll", raw, final_read=False),
        ]
        if floor_url is not None:
            floor_ws = await stack.enter_async_context(trio_websocket.open_websocket_url(floor_url))
            arms.append(Arm("stack-floor", functools.partial(_stack_floor.once, floor_ws)))
        arms += [subprocess_arm(), trio_process_arm()]
        by_protocol = {}
        for proto in protocols:
            results = await measure(arms, proto.runs, proto.calls)
            by_protocol[proto.label] = results
            _table(section, proto, results)
        calls = max(proto.calls for proto in protocols)
        for name, bench, server in ((DEFAULT_ARM, client, default), (UNSANDBOXED_ARM, bare, unsandboxed)):
            server_cpu, client_cpu = await cpu_per_call(bench, server.pid, calls)
            section.note(
                f"CPU per `{name}` one-shot over {calls} calls (psutil, 10 ms tick resolution): server {server_cpu * 1e6:.0f} µs, "
                f"client {client_cpu * 1e6:.0f} µs (the child's own CPU is not included in either)."
            )
    section.note(
        f"`{DEFAULT_ARM}` is what users get: `exec_client.open_client` with its defaults (lossless delivery, binary output "
        "frames) against `exec-server serve` with its defaults (readOnly sandbox, `--audit-denials auto`). "
        f"`{UNSANDBOXED_ARM}` is the same client against a server started with `--sandbox none`. "
        "`pushed-raw`, `final-read` and `poll` share one minimal raw-protocol loop (benchmarks/_raw.py) against the "
        "unsandboxed server, so pushed-raw vs final-read isolates the protocol change; `poll` skips decoding the "
        "server's pushed events, as a legacy server would not send them. `stack-floor` is the least any server on "
        "this stack can do: a trio-websocket server process that spawns /usr/bin/true the same way (vfork, pidfd) and "
        "answers with one message, no JSON-RPC (benchmarks/_stack_floor.py). Both servers are separate `exec-server` "
        "processes; every arm runs in the same loop, interleaved call by call."
    )
    return LatencyOutcome(section, by_protocol, client.name, True)


def _table(section: Section, proto: Protocol, results: Sequence[ArmResult]) -> None:
    floor = next((r for r in results if r.name == "subprocess.run"), None)
    table = section.table(
        "arm", "p50 ms", "p90 ms", "p99 ms", "per-run p50 ms", "reads/call", "p50 / subprocess.run",
        caption=f"**{proto.label}**: {proto.runs} runs × {proto.calls} calls per arm; percentiles are the median across runs.",
    )  # fmt: skip
    for result in results:
        if result.error is not None:
            section.note(f"{proto.label}: arm `{result.name}` stopped after {result.calls} calls: {result.error}")
        if not result.runs:
            table.add(result.name, "-", "-", "-", "-", "-", "-")
            continue
        summary = result.summary
        ratio = f"{summary.p50 / floor.summary.p50:.2f}×" if floor is not None and floor.runs else "-"
        per_run = " / ".join(fmt_ms(run.p50) for run in summary.runs)
        reads = f"{result.reads / result.calls:.2f}" if result.calls else "-"
        table.add(result.name, fmt_ms(summary.p50), fmt_ms(summary.p90), fmt_ms(summary.p99), per_run, reads, ratio)
