"""``python -m benchmarks [--quick] [--out benchmarks/RESULTS.md] [--profile DIR]``."""

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

from . import _client_flavors, _codex, _concurrency, _latency, _memory, _peers, _sandbox_overhead, _throughput
from ._profile import profiling
from ._report import Section, Target, plot_cdf, render
from ._servers import server_process
from ._stack_floor import stack_floor_server

DEFAULT_OUT: Final = Path(__file__).resolve().parent / "RESULTS.md"
MIB: Final = 1024 * 1024
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path (the CDF PNG goes next to it)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="record py-spy profiles of server and client into DIR")
    parser.add_argument("--audit-denials", choices=["auto", "on", "off"], default="off", help="the server's --audit-denials")
    parser.add_argument("--skip", action="append", default=[], choices=["latency", "client", "throughput", "concurrency", "memory", "sandbox", "peers", "codex"])
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    report = Report()
    targets: list[Target] = []
    cdf: dict[str, list[float]] = {}
    command = "python -m benchmarks" + (" --quick" if args.quick else "")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sources = _throughput.make_sources(Path(tmp), plan.stream_bytes)
        with server_process(audit_denials=args.audit_denials) as server, stack_floor_server() as floor_url:
            roles = [("server", server.pid), ("client", os.getpid())]
            if "latency" not in args.skip:
                with profiling(args.profile, "latency", roles):
                    latency = report.attempt(
                        "latency", lambda: trio.run(_latency.run_section, server.url, server.token, plan.protocols, floor_url, server.pid)
                    )
                if latency is not None:
                    report.sections.append(latency.section)
                    last = latency.by_protocol[plan.protocols[-1].label]
                    cdf.update({r.name: r.samples for r in last})
                    targets += _latency_targets(last, plan.protocols[-1].label)
            if "client" not in args.skip:
                counts = {"batches": plan.flavor_batches, "per_batch": plan.flavor_per_batch, "cold_runs": plan.cold_runs}
                flavors = report.attempt("client flavors", lambda: _client_flavors.measure(server.url, server.token, **counts))
                if flavors is not None:
                    report.sections.append(_client_flavors.section(flavors, **counts))
                    targets += _client_flavor_targets(flavors)
            if "throughput" not in args.skip:
                with profiling(args.profile, "throughput", roles):
                    throughput = report.attempt(
                        "throughput", lambda: trio.run(_throughput.run_section, server.url, server.token, sources, plan.reps)
                    )
                if throughput is not None:
                    section, arms = throughput
                    report.sections.append(section)
                    targets += _throughput_targets(arms, plan.stream_bytes)
            if "concurrency" not in args.skip:
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
                    if concurrency.fifty_wall is not None:
                        targets.append(
                            Target(f"{plan.at_once} × `sleep 0.1` at once ≤ 0.20 s wall", f"{concurrency.fifty_wall:.3f} s", concurrency.fifty_wall <= 0.20)
                        )
                    targets.append(
                        Target(
                            f"{concurrency.fanout_total} processes across {plan.sessions} sessions: every record complete",
                            f"{concurrency.fanout_complete}/{concurrency.fanout_total}",
                            concurrency.fanout_complete == concurrency.fanout_total,
                        )
                    )
        if "memory" not in args.skip:
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
        if "sandbox" not in args.skip:
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
        if "codex" not in args.skip:  # the Codex peer arm: its own servers, side by side
            with server_process(audit_denials=args.audit_denials) as codex_arm_server:
                codex_section = report.attempt(
                    "codex",
                    lambda: trio.run(
                        functools.partial(
                            _codex.run_section,
                            codex_arm_server.url,
                            codex_arm_server.token,
                            calls=5 if args.quick else 50,
                            runs=plan.reps,
                            stream_bytes=plan.stream_bytes,
                        )
                    ),
                )
            if codex_section is not None:
                report.sections.append(codex_section)
        if "peers" not in args.skip:
            peer_protocols = [(p.label, p.runs, p.calls) for p in plan.protocols]
            peers = report.attempt("peers", lambda: _peers.run_section(peer_protocols, sources, plan.at_once, plan.reps))
            if peers is not None:
                report.sections.append(peers.section)
                last_label = plan.protocols[-1].label
                if last_label in peers.samples:
                    cdf["asyncssh"] = peers.samples[last_label]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_name(args.out.stem.lower().replace("results", "latency_cdf") + ".png")
    if png.name == args.out.name:
        png = args.out.with_suffix(".png")
    preamble = []
    if cdf:
        skipped = plot_cdf(png, cdf, f"Completion latency CDF, one-shot /usr/bin/true ({plan.protocols[-1].label})")
        preamble.append(skipped if skipped else f"![latency CDF]({png.name})")
    if report.failed:
        preamble.append("**Sections that failed:** " + ", ".join(report.failed))
    args.out.write_text(render("Benchmark results", command, targets, report.sections, preamble))
    print(f"benchmarks: wrote {args.out}", file=sys.stderr)
    return 1 if report.failed else 0


def _client_flavor_targets(result: _client_flavors.FlavorResult) -> list[Target]:
    return [
        Target(
            "asyncio client one-shot p50 ≤ 1.2× the trio client's (no trio imported)",
            f"{result.asyncio_over_trio:.2f}× ({result.p50['asyncio'] * 1000:.2f} vs {result.p50['trio'] * 1000:.2f} ms)",
            result.asyncio_over_trio <= 1.2,
        ),
        Target(
            "`exec-client run -- /usr/bin/true` ≤ 4× a bare `python3 -c pass`",
            f"{result.cold_over_bare:.2f}× ({result.cold_p50 * 1000:.0f} vs {result.bare_p50 * 1000:.0f} ms)",
            result.cold_over_bare <= 4,
        ),
    ]


def _latency_targets(results: list[_latency.ArmResult], label: str) -> list[Target]:
    by_name = {r.name: r for r in results if r.runs}
    pushed, floor, final_read = by_name.get("pushed"), by_name.get("subprocess.run"), by_name.get("final-read")
    if pushed is None or floor is None or final_read is None:
        return [Target("latency targets", "an arm failed: see the latency section", False)]
    ratio = pushed.summary.p50 / floor.summary.p50
    raw, stack = by_name.get("pushed-raw"), by_name.get("stack-floor")
    return [
        Target(
            f"pushed p50 ≤ 2.0× subprocess.run p50 ({label})",
            f"{pushed.summary.p50:.3f} / {floor.summary.p50:.3f} ms = {ratio:.2f}×"
            + (f" (stack-floor arm {stack.summary.p50 / floor.summary.p50:.2f}×)" if stack is not None else ""),
            ratio <= 2.0,
        ),
        # The protocol A/B: the same raw client loop, pushed completion vs exit + final read.
        *(
            [
                Target(
                    f"pushed faster than final-read, same raw client ({label}, p50)",
                    f"pushed-raw {raw.summary.p50:.3f} vs final-read {final_read.summary.p50:.3f} ms",
                    raw.summary.p50 < final_read.summary.p50,
                )
            ]
            if raw is not None
            else []
        ),
        # And the client users run, which adds its own work (assembler, release) on top.
        Target(
            f"exec_client pushed faster than raw final-read ({label}, p50)",
            f"{pushed.summary.p50:.3f} vs {final_read.summary.p50:.3f} ms",
            pushed.summary.p50 < final_read.summary.p50,
        ),
        Target("0 process/read calls in the pushed arm", f"{pushed.reads} reads in {pushed.calls} calls", pushed.reads == 0),
    ]


def _throughput_targets(arms: list[_throughput.ArmSamples], size: int) -> list[Target]:
    targets = []
    for entry in arms:
        if not entry.arm.startswith("client") or "lossless" not in entry.arm:
            continue
        valid = [s for s in entry.samples if s.seconds == s.seconds]
        if not valid:
            continue
        rate = entry.mb_per_s(size)
        targets.append(
            Target(f"streaming ≥ 400 MB/s byte-exact ({entry.arm}, {entry.source})", f"{rate:.0f} MB/s, exact={'yes' if entry.exact else 'no'}", rate >= 400 and entry.exact)
        )
    return targets


if __name__ == "__main__":
    sys.exit(main())
