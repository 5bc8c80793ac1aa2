"""Sandbox overhead: sandboxed vs unsandboxed one-shot completion, at rest and at ~1 GiB RSS.

The server runs inside this process so the benchmark can inflate the server's own heap (a
touched 1 GiB bytearray) without any hook in the public server: a spawn path that forks
(instead of vfork) pays for copying the page tables of that heap, a vfork path does not.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Sequence
from typing import Final

import attrs
import psutil

from ._clients import open_bench_client
from ._latency import READ_ONLY, ArmResult, client_arm, measure, probe_sandbox, subprocess_arm
from ._report import Section, Table, fmt_ms
from ._servers import in_process_server

GIB: Final = 1024 * 1024 * 1024
PAGE: Final = 4096


@attrs.define
class OverheadOutcome:
    section: Section
    ratios: dict[str, float] = attrs.Factory(dict)
    rest: list[ArmResult] = attrs.Factory(list)
    heavy: list[ArmResult] = attrs.Factory(list)


def touched_ballast(size: int) -> bytearray:
    ballast = bytearray(size)
    ballast[::PAGE] = b"\x01" * len(range(0, size, PAGE))  # one write per page: it is resident
    return ballast


async def run_section(runs: int, calls: int, ballast_bytes: int = GIB) -> OverheadOutcome:
    section = Section("Sandbox overhead: one-shot /usr/bin/true, in-process server")
    outcome = OverheadOutcome(section)
    me = psutil.Process(os.getpid())
    async with in_process_server() as server, open_bench_client(server.url, server.token) as client:
        why_not = await probe_sandbox(client)
        if why_not is not None:
            section.note(f"skipped: the sandbox is not available here ({why_not})")
            return outcome
        arms = [client_arm("unsandboxed", client), client_arm("readOnly", client, sandbox=READ_ONLY), subprocess_arm()]
        table = section.table("server RSS", "arm", "p50 ms", "p90 ms", "p99 ms", "p50 / unsandboxed")
        rss_rest = me.memory_info().rss
        outcome.rest = await measure(arms, runs, calls)
        _rows(table, f"{rss_rest / GIB * 1024:.0f} MiB", outcome.rest)
        ballast = touched_ballast(ballast_bytes)
        try:
            rss_heavy = me.memory_info().rss
            outcome.heavy = await measure(arms, runs, calls)
            _rows(table, f"{rss_heavy / GIB * 1024:.0f} MiB", outcome.heavy)
        finally:
            del ballast
    for label, results in (("rest", outcome.rest), ("heavy", outcome.heavy)):
        by_name = {r.name: r.summary.p50 for r in results if r.runs}
        if "readOnly" in by_name and "unsandboxed" in by_name:
            outcome.ratios[label] = by_name["readOnly"] / by_name["unsandboxed"]
        for result in results:
            if result.error is not None:
                section.note(f"arm `{result.name}` ({label}) stopped after {result.calls} calls: {result.error}")
    if "rest" in outcome.ratios and "heavy" in outcome.ratios:
        rest_ro = next(r for r in outcome.rest if r.name == "readOnly").summary.p50
        heavy_ro = next(r for r in outcome.heavy if r.name == "readOnly").summary.p50
        outcome.ratios["readOnly heavy/rest"] = heavy_ro / rest_ro
    spawn_level(section, calls, ballast_bytes)
    section.note(
        f"{runs} runs × {calls} calls per arm, interleaved; the server shares this process, so its RSS includes the "
        f"client and, in the second block, a touched {ballast_bytes / (1024 * 1024):.0f} MiB bytearray. `subprocess.run` in the same "
        "process is the vfork floor. readOnly is requested per call from a server whose default is `none`."
    )
    return outcome


def _rows(table: Table, rss_label: str, results: Sequence[ArmResult]) -> None:
    base = next((r.summary.p50 for r in results if r.name == "unsandboxed" and r.runs), None)
    for result in results:
        if not result.runs:
            table.add(rss_label, result.name, "-", "-", "-", "-")
            continue
        summary = result.summary
        ratio = f"{summary.p50 / base:.2f}×" if base else "-"
        table.add(rss_label, result.name, fmt_ms(summary.p50), fmt_ms(summary.p90), fmt_ms(summary.p99), ratio)


def spawn_level(section: Section, runs: int, ballast_bytes: int) -> None:
    """The sandbox helper's spawn-only measurement (benchmarks/sandbox_spawn.py), at rest and with the ballast."""
    try:
        from exec_server.sandbox import Sandbox, SandboxSettings

        from . import sandbox_spawn

        sandbox = Sandbox.create(SandboxSettings(audit_denials="off"))
        if not getattr(sandbox, "available", False):
            section.note("spawn-level table skipped: the sandbox is not available here")
            return
        with tempfile.TemporaryDirectory(prefix="sandbox-bench-", dir="/tmp") as cwd:
            os.chmod(cwd, 0o755)
            variants = sandbox_spawn._variants(sandbox, cwd)
            rest = sandbox_spawn.measure(variants, runs)
            ballast = touched_ballast(ballast_bytes)
            try:
                heavy = sandbox_spawn.measure(variants, runs)
            finally:
                del ballast
    except Exception as exc:  # noqa: BLE001 - an optional table; say why it is missing
        section.note(f"spawn-level table skipped: {type(exc).__name__}: {exc}")
        return
    table = section.table(
        "spawn variant (benchmarks/sandbox_spawn.py)", "median ms at rest", f"median ms with {ballast_bytes // (1024 * 1024)} MiB ballast", "× plain at rest", "× plain with ballast",
        caption=f"Spawn only (Popen + wait, no server), {runs} interleaved spawns per variant:",
    )  # fmt: skip
    plain_rest, plain_heavy = statistics.median(rest["plain"]), statistics.median(heavy["plain"])
    for name in rest:
        r, h = statistics.median(rest[name]), statistics.median(heavy[name])
        table.add(name.strip(), f"{r:.3f}", f"{h:.3f}", f"{r / plain_rest:.2f}×", f"{h / plain_heavy:.2f}×")
