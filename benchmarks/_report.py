"""The report: sections of tables and notes, rendered to RESULTS.md, and the latency CDF plot."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import attrs


@attrs.define
class Table:
    headers: list[str]
    rows: list[list[str]] = attrs.Factory(list)
    caption: str | None = None

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def render(self) -> str:
        lines = []
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@attrs.define
class Section:
    title: str
    tables: list[Table] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    def table(self, *headers: str, caption: str | None = None) -> Table:
        table = Table(list(headers), caption=caption)
        self.tables.append(table)
        return table

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        parts = [f"## {self.title}"] + [table.render() for table in self.tables]
        if self.notes:
            parts.append("\n".join(f"- {note}" for note in self.notes))
        return "\n\n".join(parts)


@attrs.define
class Target:
    text: str
    measured: str
    holds: bool | None  # None: not measured in this run


def fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(command: str) -> list[str]:
    versions = ", ".join(f"{name} {_version(name)}" for name in ("trio", "trio-websocket", "cattrs", "asyncssh", "matplotlib"))
    return [
        f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}",
        f"- Python {sys.version.split()[0]}; {versions}",
        f"- Command: `{command}`",
    ]


def render(title: str, command: str, targets: Sequence[Target], sections: Sequence[Section], preamble: Sequence[str]) -> str:
    parts = [f"# {title}", "\n".join(machine_lines(command))]
    parts += list(preamble)
    if targets:
        table = Table(["target", "measured", "holds"])
        for target in targets:
            table.add(target.text, target.measured, {True: "yes", False: "**no**", None: "not measured"}[target.holds])
        parts += ["## Targets", table.render()]
    parts += [section.render() for section in sections]
    return "\n\n".join(parts) + "\n"


def plot_cdf(path: Path, series: dict[str, Sequence[float]], title: str) -> str | None:
    """Write a PNG of the latency CDF per arm; returns a note if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "latency CDF plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for name, seconds in series.items():
        if not seconds:
            continue
        ms = sorted(s * 1000.0 for s in seconds)
        axes.step(ms, [(i + 1) / len(ms) for i in range(len(ms))], where="post", label=f"{name} (n={len(ms)})")
    axes.set_xscale("log")
    axes.set_xlabel("completion latency (ms, log scale)")
    axes.set_ylabel("fraction of calls")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None
