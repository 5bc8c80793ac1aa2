"""Optional sampling profiles (py-spy) of the server and of this process while a section runs.

``python -m benchmarks --profile DIR`` writes py-spy's collapsed stacks per section and role,
and a summary of the top frames by self time and by inclusive time (on-CPU samples only:
py-spy leaves out threads idle in the event loop's epoll wait).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

SAMPLE_RATE: Final = 997
# Leaf frames that are waits, not work: py-spy's idle detection misses a loop parked in
# epoll_wait with a timeout and trio's cached worker threads parked on their lock.
WAIT_LEAVES: Final = ("EpollIOManager.get_events (", "WorkerThread._work (")
_FRAME: Final = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Repository paths in profiles are shown relative to the checkout, wherever it is.
_REPO_ROOT: Final = str(Path(__file__).resolve().parents[1]) + os.sep


def py_spy() -> str | None:
    """py-spy on the PATH, or next to this interpreter (a venv run without activating it)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


@contextlib.contextmanager
def profiling(directory: Path | None, label: str, targets: Sequence[tuple[str, int]]) -> Iterator[None]:
    """Record ``targets`` ((role, pid) pairs) while the body runs; a no-op without a directory."""
    executable = py_spy()
    if directory is None or executable is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    recorders = []
    for role, pid in targets:
        output = directory / f"{label}-{role}.txt"
        argv = [executable, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(output)]
        recorders.append((role, output, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    try:
        yield
    finally:
        for _role, _output, recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for _role, _output, recorder in recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        with (directory / "summary.txt").open("a") as summary:
            for role, output, _recorder in recorders:
                if output.exists():
                    summary.write(summarize(output, f"{label} / {role}") + "\n")


def _function(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match["file"]
    # Shorten site-packages and repository paths to something readable.
    for marker in ("site-packages/", "lib/python3.11/", _REPO_ROOT):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['func']} ({file})"


# Inclusive time is shown for our own code only: every stack starts in runpy and trio's loop.
OWN_CODE: Final = ("(exec_server/", "(exec_client/", "(protocol/")


def top_frames(path: Path, top: int) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(busy samples, top self frames, top inclusive frames of our own code) of one raw py-spy
    profile, as % of busy samples."""
    self_counts, inclusive, total, _waiting = _count(path)
    if not total:
        return 0, [], []
    own = [
        (name, n)
        for name, n in inclusive.most_common()
        if any(marker in name for marker in OWN_CODE) and n < 0.95 * total  # not the entry point every stack has
    ]
    return (
        total,
        [(name, 100 * n / total) for name, n in self_counts.most_common(top)],
        [(name, 100 * n / total) for name, n in own[:top]],
    )


def _count(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int, int]:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";") if frame and not frame.startswith("process ")]
        frames = [frame for frame in frames if not frame.startswith("thread (")]
        if not frames:
            continue
        if frames[-1].startswith(WAIT_LEAVES):
            waiting += count
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return self_counts, inclusive, total, waiting


def summarize(path: Path, title: str, top: int = 20) -> str:
    self_counts, inclusive, total, waiting = _count(path)
    lines = [f"== {title}: {total} busy samples at {SAMPLE_RATE} Hz ({waiting} more parked in epoll/worker waits, left out)"]
    if total:
        lines.append("-- self")
        lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in self_counts.most_common(top)]
        lines.append("-- inclusive")
        lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def own_pid() -> int:
    return os.getpid()
