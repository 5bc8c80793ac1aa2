"""``python -m benchmarks [--quick] [--out benchmarks/RESULTS.md] [--profile DIR]``.

The one command that regenerates RESULTS.md and its plots (latency_cdf.png,
throughput_by_size.png). The headline arm is the default configuration — ``exec-server serve``
with its defaults (readOnly sandbox, audit as shipped) and ``open_client`` with its defaults
(lossless, binary output) — next to an unsandboxed server, ``codex exec-server`` as the peer and
local ``subprocess.run`` as the floor, all in one run.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from . import _client_flavors, _codex, _concurrency, _latency, _memory, _peers, _sandbox_overhead, _throughput, _where
from ._profile import profiling
from ._report import Conditions, Section, Target, plot_cdf, plot_throughput, render
from ._servers import server_process
from ._stack_floor import stack_floor_server

DEFAULT_OUT: Final = Path(__file__).resolve().parent / "RESULTS.md"
MIB: Final = 1024 * 1024
SECTIONS: Final = ("latency", "client", "throughput", "concurrency", "memory", "sandbox", "peers", "codex", "where")
# The targets of issue 15, as ratios measured side by side in one run.
DEFAULT_TARGET: Final = 2.0  # default configuration one-shot p50 / subprocess.run p50
UNSANDBOXED_TARGET: Final = 1.6
BINARY_TARGET_MB_S: Final = 600.0
TEXT_TARGET_MB_S: Final = 400.0
CODEX_ARM: Final = "codex exec-server"
# The CDF shows the headline arms only (every arm is in the latency tables).
CDF_ARMS: Final = (_latency.DEFAULT_ARM, _latency.UNSANDBOXED_ARM, "subprocess.run")
T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Plan:
    """How much of everything to run."""

    protocols: tuple[_latency.Protocol, ...]
    stream_bytes: int
    reps: int
    at_once: int
    sessions: int
    per_session: int
    idle_sessions: int
    overhead_runs: int
    overhead_calls: int
    ballast_bytes: int
    flavor_batches: int
    flavor_per_batch: int
    cold_runs: int
    size_sweep_bytes: int
    codex_calls: int
    profile_calls: int


FULL: Final = Plan(
    protocols=(_latency.Protocol("seed", 3, 30), _latency.Protocol("long", 5, 200)),
    stream_bytes=100_000_000,
    reps=3,
    at_once=50,
    sessions=100,
    per_session=10,
    idle_sessions=100,
    overhead_runs=3,
    overhead_calls=100,
    ballast_bytes=1024 * MIB,
    flavor_batches=6,
    flavor_per_batch=50,
    cold_runs=20,
    size_sweep_bytes=32_000_000,
    codex_calls=50,
    profile_calls=500,
)
QUICK: Final = Plan(
    protocols=(_latency.Protocol("seed (quick)", 1, 5),),
    stream_bytes=4_000_000,
    reps=1,
    at_once=5,
    sessions=4,
    per_session=5,
    idle_sessions=5,
    overhead_runs=1,
    overhead_calls=5,
    ballast_bytes=64 * MIB,
    flavor_batches=1,
    flavor_per_batch=5,
    cold_runs=3,
    size_sweep_bytes=1_000_000,
    codex_calls=5,
    profile_calls=20,
)


class Report:
    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.failed: list[str] = []

    def attempt(self, title: str, body: Callable[[], T]) -> T | None:
        """Run one section; a failure becomes a visible note (and a non-zero exit), not a crash."""
        started = time.perf_counter()
        print(f"benchmarks: {title} ...", file=sys.stderr, flush=True)
        try:
            result = body()
        except Exception as exc:  # noqa: BLE001 - reported in RESULTS.md and the exit status
            traceback.print_exc()
            section = Section(title)
            section.note(f"FAILED: {_leaf_errors(exc)}")
            self.sections.append(section)
            self.failed.append(title)
            return None
        print(f"benchmarks: {title} done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        return result


def _leaf_errors(exc: BaseException) -> str:
    """The innermost errors of a (possibly nested) exception group, where the cause is."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_leaf_errors(sub) for sub in exc.exceptions)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a seconds-long smoke run (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path (the PNG plots go next to it)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also keep py-spy profiles of server and client per section in DIR")
    parser.add_argument("--audit-denials", choices=["auto", "on", "off"], default=None, help="the default server's --audit-denials (default: as shipped)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    skip = set(args.skip) | ({"where"} if args.quick else set())
    report = Report()
    targets: list[Target] = []
    cdf: dict[str, list[float]] = {}
    sizes: dict[str, list[tuple[int, float]]] = {}
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    began = time.monotonic()
    load_before = os.getloadavg()
    floor_spread: float | None = None

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sources = _throughput.make_sources(Path(tmp), plan.stream_bytes)
        with (
            server_process(audit_denials=args.audit_denials) as server,
            server_process(sandbox="none") as unsandboxed,
            stack_floor_server() as floor_url,
        ):
            roles = [("server", server.pid), ("client", os.getpid())]
            if "latency" not in skip:
                with profiling(args.profile, "latency", roles):
                    latency = report.attempt(
                        "latency", lambda: trio.run(_latency.run_section, server, unsandboxed, plan.protocols, floor_url)
                    )
                if latency is not None:
                    report.sections.append(latency.section)
                    last = latency.by_protocol[plan.protocols[-1].label]
                    cdf.update({r.name: r.samples for r in last if r.name in CDF_ARMS})
                    targets += _latency_targets(last, plan.protocols[-1].label)
                    floor_spread = _spread(last, "subprocess.run")
            if "throughput" not in skip:
                with profiling(args.profile, "throughput", roles):
                    throughput = report.attempt(
                        "throughput", lambda: trio.run(_throughput.run_section, server.url, server.token, sources, plan.reps)
                    )
                if throughput is not None:
                    section, arms = throughput
                    report.sections.append(section)
                    targets += _throughput_targets(arms, plan.stream_bytes)
                by_size = report.attempt(
                    "throughput by message size",
                    lambda: trio.run(_throughput.by_message_size, server.url, server.token, plan.size_sweep_bytes, plan.reps),
                )
                if by_size is not None:
                    report.sections.append(by_size[0])
                    sizes = by_size[1]
            if "concurrency" not in skip:
                concurrency = report.attempt(
                    "concurrency",
                    lambda: trio.run(
                        lambda: _concurrency.run_section(
                            server.url, server.token, count=plan.at_once, sessions=plan.sessions,
                            per_session=plan.per_session, reps=plan.reps,
                        )  # fmt: skip
                    ),
                )
                if concurrency is not None:
                    report.sections.append(concurrency.section)
                    targets += _concurrency_targets(concurrency, plan)
            if "client" not in skip:
                counts = {"batches": plan.flavor_batches, "per_batch": plan.flavor_per_batch, "cold_runs": plan.cold_runs}
                flavors = report.attempt("client flavors", lambda: _client_flavors.measure(server.url, server.token, **counts))
                if flavors is not None:
                    report.sections.append(_client_flavors.section(flavors, **counts))
                    targets += _client_flavor_targets(flavors)
            if "codex" not in skip:  # the Codex peer arm: its own server, side by side with ours
                codex = report.attempt(
                    "codex",
                    lambda: trio.run(
                        functools.partial(
                            _codex.run_section, server.url, server.token,
                            calls=plan.codex_calls, runs=plan.reps, stream_bytes=plan.stream_bytes,
                        )  # fmt: skip
                    ),
                )
                if codex is not None:
                    report.sections.append(codex.section)
                    if codex.one_shot.get("codex"):
                        cdf[CODEX_ARM] = codex.one_shot["codex"]
            if "where" not in skip:
                where = report.attempt(
                    "where the time goes",
                    lambda: _where.run_section(server, os.getpid(), calls=plan.profile_calls, stream_bytes=plan.stream_bytes, directory=args.profile),
                )
                if where is not None:
                    report.sections.append(where)
        if "memory" not in skip:
            # A fresh server: its RSS at rest must not include the earlier sections' history.
            def memory() -> Any:
                with server_process(audit_denials=args.audit_denials) as fresh:
                    return trio.run(
                        lambda: _memory.run_section(fresh.url, fresh.token, fresh.pid, sources[0], sessions=plan.idle_sessions)
                    )

            outcome = report.attempt("memory", memory)
            if outcome is not None:
                report.sections.append(outcome.section)
                for label, growth in outcome.growth.items():
                    if "lossless" in label:
                        beyond = (growth - outcome.retain_bytes) / MIB
                        targets.append(
                            Target(
                                f"server RSS growth streaming {plan.stream_bytes / 1e6:.0f} MB ({label}) ≤ 64 MiB beyond the retention cap",
                                f"{growth / MIB:.1f} MiB peak growth, {beyond:.1f} MiB beyond the {outcome.retain_bytes / MIB:.0f} MiB cap",
                                beyond <= 64,
                            )
                        )
        if "sandbox" not in skip:
            overhead = report.attempt(
                "sandbox overhead",
                lambda: trio.run(_sandbox_overhead.run_section, plan.overhead_runs, plan.overhead_calls, plan.ballast_bytes),
            )
            if overhead is not None:
                report.sections.append(overhead.section)
                if "rest" in overhead.ratios and "heavy" in overhead.ratios:
                    rest, heavy = overhead.ratios["rest"], overhead.ratios["heavy"]
                    targets.append(
                        Target(
                            "sandboxed one-shot ≤ 2.5× unsandboxed, flat with server RSS",
                            f"{rest:.2f}× at rest, {heavy:.2f}× at ~{plan.ballast_bytes / MIB:.0f} MiB ballast; "
                            f"readOnly p50 heavy/rest {overhead.ratios['readOnly heavy/rest']:.2f}×",
                            rest <= 2.5 and heavy <= 2.5,
                        )
                    )
        if "peers" not in skip:
            peer_protocols = [(p.label, p.runs, p.calls) for p in plan.protocols]
            peers = report.attempt("peers", lambda: _peers.run_section(peer_protocols, sources, plan.at_once, plan.reps))
            if peers is not None:
                report.sections.append(peers.section)

    conditions = Conditions(cores=os.cpu_count() or 1, before=load_before, after=os.getloadavg(), floor_spread=floor_spread)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    preamble = [conditions.render(time.monotonic() - began)]
    if cdf:
        png = args.out.with_name("latency_cdf.png")
        skipped = plot_cdf(
            png, cdf, f"Completion latency CDF, one-shot /usr/bin/true ({plan.protocols[-1].label})",
            floor="subprocess.run", target_ratio=DEFAULT_TARGET,
        )  # fmt: skip
        preamble.append(skipped if skipped else f"![latency CDF]({png.name})")
    if sizes:
        png = args.out.with_name("throughput_by_size.png")
        skipped = plot_throughput(
            png, sizes, "Throughput by output message size (default server, lossless)",
            {_throughput.DEFAULT_ARM: BINARY_TARGET_MB_S, _throughput.TEXT_ARM: TEXT_TARGET_MB_S},
        )  # fmt: skip
        preamble.append(skipped if skipped else f"![throughput by message size]({png.name})")
    if report.failed:
        preamble.append("**Sections that failed:** " + ", ".join(report.failed))
    args.out.write_text(render("Benchmark results", command, targets, report.sections, preamble))
    print(f"benchmarks: wrote {args.out} in {time.monotonic() - began:.0f}s", file=sys.stderr)
    return 1 if report.failed else 0


def _spread(results: list[_latency.ArmResult], name: str) -> float | None:
    """max/min of an arm's per-run p50s: how much the machine drifted between runs."""
    arm = next((r for r in results if r.name == name and r.runs), None)
    if arm is None or len(arm.summary.runs) < 2:
        return None
    p50s = [run.p50 for run in arm.summary.runs]
    return max(p50s) / min(p50s)


def _concurrency_targets(outcome: _concurrency.ConcurrencyOutcome, plan: Plan) -> list[Target]:
    targets = []
    if outcome.fifty_wall is not None:
        targets.append(
            Target(f"{plan.at_once} × `sleep 0.1; echo hi` at once ≤ 0.15 s wall", f"{outcome.fifty_wall:.3f} s", outcome.fifty_wall <= 0.15)
        )
    complete = outcome.fanout_complete == outcome.fanout_total
    if outcome.lag_p99 is not None:
        targets.append(
            Target(
                f"{outcome.fanout_total} concurrent processes over {plan.sessions} sessions: p99 completion lag ≤ 50 ms, every record complete",
                f"p99 {outcome.lag_p99 * 1000:.1f} ms (p50 {outcome.lag_p50 * 1000:.1f} ms); {outcome.fanout_complete}/{outcome.fanout_total} complete",  # type: ignore[operator]
                outcome.lag_p99 <= 0.050 and complete,
            )
        )
    else:
        targets.append(Target(f"{outcome.fanout_total} processes over {plan.sessions} sessions", f"{outcome.fanout_complete}/{outcome.fanout_total} complete, no lag measured", False))
    return targets


def _client_flavor_targets(result: _client_flavors.FlavorResult) -> list[Target]:
    return [
        Target(
            "asyncio client one-shot p50 ≤ 1.2× the trio client's (no trio imported)",
            f"{result.asyncio_over_trio:.2f}× ({result.p50['asyncio'] * 1000:.2f} vs {result.p50['trio'] * 1000:.2f} ms)",
            result.asyncio_over_trio <= 1.2,
        ),
        Target(
            "`exec-client run -- /usr/bin/true` ≤ 4× a bare `python3 -c pass`",
            f"{result.cold_over_bare:.2f}× ({result.cold_p50 * 1000:.0f} vs {result.bare_p50 * 1000:.0f} ms) through the "
            f"control master, as shipped; {result.own_over_bare:.2f}× ({result.own_p50 * 1000:.0f} ms) with --control-persist 0",
            result.cold_over_bare <= 4,
        ),
    ]


def _latency_targets(results: list[_latency.ArmResult], label: str) -> list[Target]:
    by_name = {r.name: r for r in results if r.runs}
    default, bare, floor = by_name.get(_latency.DEFAULT_ARM), by_name.get(_latency.UNSANDBOXED_ARM), by_name.get("subprocess.run")
    final_read, raw, stack = by_name.get("final-read"), by_name.get("pushed-raw"), by_name.get("stack-floor")
    if default is None or bare is None or floor is None or final_read is None:
        return [Target("latency targets", "an arm failed: see the latency section", False)]
    ratio, bare_ratio = default.summary.p50 / floor.summary.p50, bare.summary.p50 / floor.summary.p50
    stack_note = f"; stack-floor arm {stack.summary.p50 / floor.summary.p50:.2f}×" if stack is not None else ""
    targets = [
        Target(
            f"default configuration one-shot p50 ≤ {DEFAULT_TARGET:g}× subprocess.run ({label})",
            f"{default.summary.p50:.3f} / {floor.summary.p50:.3f} ms = {ratio:.2f}×",
            ratio <= DEFAULT_TARGET,
        ),
        Target(
            f"unsandboxed one-shot p50 ≤ {UNSANDBOXED_TARGET:g}× subprocess.run ({label})",
            f"{bare.summary.p50:.3f} / {floor.summary.p50:.3f} ms = {bare_ratio:.2f}×{stack_note}",
            bare_ratio <= UNSANDBOXED_TARGET,
        ),
    ]
    for arm in (default, bare):
        tail = arm.summary.p99 / arm.summary.p50
        targets.append(
            Target(f"{arm.name} one-shot p99 ≤ 2× its p50 ({label})", f"{arm.summary.p99:.3f} / {arm.summary.p50:.3f} ms = {tail:.2f}×", tail <= 2.0)
        )
    if raw is not None:  # the protocol A/B: the same raw client loop, pushed completion vs exit + final read
        targets.append(
            Target(
                f"pushed faster than final-read, same raw client ({label}, p50)",
                f"pushed-raw {raw.summary.p50:.3f} vs final-read {final_read.summary.p50:.3f} ms",
                raw.summary.p50 < final_read.summary.p50,
            )
        )
    targets.append(Target(f"0 process/read calls in the {default.name} arm", f"{default.reads} reads in {default.calls} calls", default.reads == 0))
    return targets


def _throughput_targets(arms: list[_throughput.ArmSamples], size: int) -> list[Target]:
    targets = []
    for entry in arms:
        goal = {_throughput.DEFAULT_ARM: BINARY_TARGET_MB_S, _throughput.TEXT_ARM: TEXT_TARGET_MB_S}.get(entry.arm)
        valid = [s for s in entry.samples if s.seconds == s.seconds]
        if goal is None or not valid:
            continue
        rate = entry.mb_per_s(size)
        targets.append(
            Target(
                f"{size / 1e6:.0f} MB stdout ≥ {goal:.0f} MB/s byte-exact ({entry.arm}, {entry.source})",
                f"{rate:.0f} MB/s, exact={'yes' if entry.exact else 'no'}",
                rate >= goal and entry.exact,
            )
        )
    return targets


if __name__ == "__main__":
    sys.exit(main())
