"""Sandbox overhead (issue 3): sandboxed vs unsandboxed one-shot completion, at rest and at ~1 GiB RSS.

The server runs inside this process so the benchmark can inflate the server's own heap (a
touched 1 GiB bytearray) without any hook in the public server: a spawn path that forks
(instead of vfork) pays for copying the page tables of that heap, a vfork path does not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import attrs
import psutil

from ._clients import open_bench_client
from ._latency import READ_ONLY, ArmResult, client_arm, measure, probe_sandbox, subprocess_arm
from ._report import Section, fmt_ms
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
    section = Section("Sandbox overhead (issue 3): one-shot /usr/bin/true, in-process server")
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
        by_name = {r.name: r.summary.p50 for r in results}
        outcome.ratios[label] = by_name["readOnly"] / by_name["unsandboxed"]
    outcome.ratios["readOnly heavy/rest"] = (
        {r.name: r.summary.p50 for r in outcome.heavy}["readOnly"] / {r.name: r.summary.p50 for r in outcome.rest}["readOnly"]
    )
    section.note(
        f"{runs} runs × {calls} calls per arm, interleaved; the server shares this process, so its RSS includes the "
        f"client and, in the second block, a touched {ballast_bytes / (1024 * 1024):.0f} MiB bytearray. `subprocess.run` in the same "
        "process is the vfork floor. readOnly is requested per call from a server whose default is `none`."
    )
    return outcome


def _rows(table, rss_label: str, results: Sequence[ArmResult]) -> None:  # type: ignore[no-untyped-def]
    base = next(r for r in results if r.name == "unsandboxed").summary.p50
    for result in results:
        summary = result.summary
        table.add(rss_label, result.name, fmt_ms(summary.p50), fmt_ms(summary.p90), fmt_ms(summary.p99), f"{summary.p50 / base:.2f}×")
