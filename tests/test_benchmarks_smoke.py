"""Smoke test of ``python -m benchmarks --quick``: it runs, and its report is well formed.

No timing is asserted anywhere: the numbers belong to the machine, not to the test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT_SECONDS = 240


def _tables(markdown: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_quick_run_writes_a_well_formed_report(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = out.read_text()

    for heading in (
        "## Targets",
        "## Completion latency",
        "## Client flavors and CLI cold start",
        "## Throughput",
        "## Throughput by message size",
        "## Concurrency",
        "## Server memory",
        "## Sandbox overhead",
        "## Peers",
    ):
        assert heading in report
    assert "FAILED" not in report
    assert re.search(r"^- Date: \d{4}-\d{2}-\d{2}", report, re.MULTILINE)
    assert re.search(r"^- Python 3\.\d+", report, re.MULTILINE)
    # The load average around the run, and the verdict of the noise rule.
    assert re.search(r"^- Load average \(1/5/15 min\): [\d.]+ / [\d.]+ / [\d.]+ before", report, re.MULTILINE)
    assert "Quiet enough to quote." in report or "**Too noisy to quote**" in report

    tables = _tables(report)
    assert tables
    for table in tables:
        header, separator, *rows = table
        assert all(set(cell) <= {"-"} for cell in separator)
        assert rows, header
        assert all(len(row) == len(header) for row in rows), header

    latency = next(t for t in tables if t[0][:2] == ["arm", "p50 ms"])
    arms = {row[0]: row for row in latency[2:]}
    for arm in ("default", "unsandboxed", "pushed-raw", "final-read", "poll", "subprocess.run", "trio.run_process"):
        assert arm in arms
        float(arms[arm][1])  # p50 is a number
    # The pushed path never reads on the complete, in-order path (protocol §9).
    assert arms["default"][5] == "0.00"
    assert arms["final-read"][5] == "1.00"
    # The headline target comes first: the default configuration.
    targets = next(t for t in tables if t[0] == ["target", "measured", "holds"])
    assert targets[2][0].startswith("default configuration one-shot p50")

    for name in ("latency_cdf.png", "throughput_by_size.png"):
        png = out.with_name(name)
        if importlib.util.find_spec("matplotlib") is not None:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        else:
            assert "plot skipped" in report
