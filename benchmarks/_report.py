"""The report: sections of tables and notes, rendered to RESULTS.md, and the latency CDF plot."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final

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


# The rule for "too noisy to quote" (see Conditions.noise).
QUIET_LOAD_BEFORE_PER_CORE: Final = 0.5  # others' load when we start
QUIET_LOAD_AFTER_PER_CORE: Final = 1.5  # ours included: client and server keep 1-2 cores busy
QUIET_FLOOR_SPREAD: Final = 1.3  # subprocess.run's per-run p50s, max / min


@attrs.frozen
class Conditions:
    """The machine's load around the run, and whether the run is quiet enough to quote."""

    cores: int
    before: tuple[float, float, float]
    after: tuple[float, float, float]
    floor_spread: float | None

    def noise(self) -> list[str]:
        """Why the run is too noisy to quote (empty: quotable)."""
        reasons = []
        if self.before[0] > QUIET_LOAD_BEFORE_PER_CORE * self.cores:
            reasons.append(f"1-min load {self.before[0]:.2f} before the run > {QUIET_LOAD_BEFORE_PER_CORE:g} per core")
        if self.after[0] > QUIET_LOAD_AFTER_PER_CORE * self.cores:
            reasons.append(f"1-min load {self.after[0]:.2f} after the run > {QUIET_LOAD_AFTER_PER_CORE:g} per core")
        if self.floor_spread is not None and self.floor_spread > QUIET_FLOOR_SPREAD:
            reasons.append(f"subprocess.run's per-run p50 varied {self.floor_spread:.2f}× (> {QUIET_FLOOR_SPREAD:g}×)")
        return reasons

    def render(self, seconds: float) -> str:
        loads = " / ".join(f"{x:.2f}" for x in self.before), " / ".join(f"{x:.2f}" for x in self.after)
        spread = f"; subprocess.run per-run p50 spread {self.floor_spread:.2f}×" if self.floor_spread is not None else ""
        lines = [f"- Load average (1/5/15 min): {loads[0]} before, {loads[1]} after; {self.cores} cores{spread}; run took {seconds:.0f} s"]
        reasons = self.noise()
        if reasons:
            lines.append("- **Too noisy to quote**: " + "; ".join(reasons) + ". Ratios measured side by side are still indicative; absolute times are not.")
        else:
            lines.append("- Quiet enough to quote.")
        lines.append(
            f"- Noise rule: a run is quotable when the 1-minute load average is ≤ {QUIET_LOAD_BEFORE_PER_CORE:g} per core before it and "
            f"≤ {QUIET_LOAD_AFTER_PER_CORE:g} per core after it, and local subprocess.run's per-run p50s agree within {QUIET_FLOOR_SPREAD:g}×."
        )
        return "\n".join(lines)


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
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("trio", "trio-websocket", "anyio", "wsproto", "cattrs", "orjson", "asyncssh", "matplotlib")
    )
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


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


PLOT_SKIPPED: Final = "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
# Clearly distinct colours per arm (the first four are the headline's), others in a neutral cycle.
ARM_COLOURS: Final = {
    "default": "#d62728",  # red: what users get
    "unsandboxed": "#1f77b4",  # blue
    "codex exec-server": "#2ca02c",  # green: the peer
    "subprocess.run": "#000000",  # black: the local floor
}


def plot_cdf(path: Path, series: Mapping[str, Sequence[float]], title: str, *, floor: str, target_ratio: float) -> str | None:
    """The latency CDF per arm on a linear axis clipped at the slowest arm's p99, the target marked.

    Returns a note instead when matplotlib is missing.
    """
    plt = _pyplot()
    if plt is None:
        return "latency CDF " + PLOT_SKIPPED
    from ._stats import percentile

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    shown = {name: sorted(s * 1000.0 for s in seconds) for name, seconds in series.items() if seconds}
    clip = max(percentile(ms, 99) for ms in shown.values())
    for name, ms in shown.items():
        axes.step(
            ms, [(i + 1) / len(ms) for i in range(len(ms))], where="post", color=ARM_COLOURS.get(name), linewidth=1.8,
            label=f"{name} (p50 {percentile(ms, 50):.2f} ms, n={len(ms)})",
        )  # fmt: skip
    if floor in shown:
        target = target_ratio * percentile(shown[floor], 50)
        axes.axvline(target, color="#ff7f0e", linestyle="--", linewidth=1.5, label=f"target: {target_ratio:g}× {floor} p50 = {target:.2f} ms")
    axes.set_xlim(0, clip * 1.02)
    axes.set_ylim(0, 1.0)
    axes.set_xlabel(f"completion latency (ms, linear; clipped at the slowest arm's p99, {clip:.1f} ms)")
    axes.set_ylabel("fraction of calls")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None


def plot_throughput(path: Path, series: Mapping[str, Sequence[tuple[int, float]]], title: str, targets: dict[str, float]) -> str | None:
    """MB/s by output message size per framing, with each framing's target as a dashed line."""
    plt = _pyplot()
    if plt is None:
        return "throughput " + PLOT_SKIPPED
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    colours = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")
    for colour, (name, points) in zip(colours, series.items(), strict=False):
        axes.plot([size for size, _ in points], [rate for _, rate in points], marker="o", color=colour, label=name)
        if name in targets:
            axes.axhline(targets[name], color=colour, linestyle="--", linewidth=1, alpha=0.7, label=f"target {targets[name]:.0f} MB/s ({name})")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("output message size (bytes per write, log scale)")
    axes.set_ylabel("MB/s (10^6 bytes)")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None
