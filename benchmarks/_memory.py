"""Server memory: RSS at rest, per idle session, and the peak while a client streams output.

The server is a separate process (``_servers.server_process``) sampled with psutil from a
thread, so the sampler keeps its rate while the benchmark's event loop is busy receiving.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Final

import attrs
import psutil
import trio

import protocol as p

from ._raw import RawConnection
from ._report import Section
from ._throughput import Source, through_client

MIB: Final = 1024 * 1024
SAMPLE_INTERVAL: Final = 0.002
SETTLE_SECONDS: Final = 0.3


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class PeakSampler:
    """Samples a process's RSS every few milliseconds in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(self._process.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(SAMPLE_INTERVAL)

    @contextlib.contextmanager
    def running(self) -> Iterator[PeakSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


@attrs.define
class MemoryOutcome:
    section: Section
    retain_bytes: int = 0
    growth: dict[str, int] = attrs.Factory(dict)


async def run_section(url: str, token: str, pid: int, source: Source, *, sessions: int) -> MemoryOutcome:
    section = Section("Server memory (exec-server subprocess, RSS)")
    outcome = MemoryOutcome(section)
    await trio.sleep(SETTLE_SECONDS)
    rest = rss(pid)
    table = section.table("measure", "value")
    table.add("RSS at rest (after startup, no connection)", f"{rest / MIB:.1f} MiB")

    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(RawConnection.open(url, token))
        outcome.retain_bytes = int(first.info["limits"]["retainBytes"])
        for _ in range(sessions - 1):
            await stack.enter_async_context(RawConnection.open(url, token))
        await trio.sleep(SETTLE_SECONDS)
        with_sessions = rss(pid)
    table.add(f"RSS with {sessions} idle sessions", f"{with_sessions / MIB:.1f} MiB")
    table.add("per idle session (connection + session)", f"{(with_sessions - rest) / sessions / 1024:.1f} KiB")

    for label, binary, delivery in (
        ("text, lossless", False, p.Delivery.LOSSLESS),
        ("binary, lossless", True, p.Delivery.LOSSLESS),
        ("text, bestEffort", False, p.Delivery.BEST_EFFORT),
    ):
        await trio.sleep(SETTLE_SECONDS)
        before = rss(pid)
        with PeakSampler(pid).running() as sampler:
            sample, _client = await through_client(url, token, source, binary=binary, delivery=delivery)
        growth = sampler.peak - before
        outcome.growth[label] = growth
        over_cap = growth - outcome.retain_bytes
        table.add(
            f"peak RSS growth streaming {source.size / 1e6:.0f} MB of {source.name} ({label})",
            f"{growth / MIB:.1f} MiB (retention cap {outcome.retain_bytes / MIB:.0f} MiB; beyond it {over_cap / MIB:.1f} MiB; "
            f"byte-exact {'yes' if sample.exact else 'no'})",
        )
    after = rss(pid)
    table.add("RSS after the streams", f"{after / MIB:.1f} MiB")
    section.note(
        f"RSS sampled every {SAMPLE_INTERVAL * 1000:.0f} ms from a thread; growth = peak during the stream minus RSS just "
        "before it. The retention cap is the server's per-process `retainBytes`."
    )
    return outcome
