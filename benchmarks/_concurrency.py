"""Concurrency: many short commands at once on one session, and many sessions at once."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Final

import attrs
import trio

import protocol as p

from ._clients import open_bench_client
from ._report import Section
from ._stats import percentile

SLEEP_ECHO: Final = ("sh", "-c", "sleep 0.1; echo hi")
ECHO: Final = ("/bin/echo", "hi")
# Prints its own wall clock as its last act (``exec``: date is the process that exits), so the
# client can tell how long after the exit its complete record arrived: the completion lag.
ECHO_STAMPED: Final = ("sh", "-c", "echo hi; exec date +%s%N")


@attrs.define
class ConcurrencyOutcome:
    section: Section
    fifty_wall: float | None = None
    fanout_complete: int = 0
    fanout_total: int = 0
    lag_p50: float | None = None
    lag_p99: float | None = None


def _good(record: p.TerminalRecord) -> bool:
    return record.exit_code == 0 and record.stdout == b"hi\n" and record.failure is None and not record.output_lost


def local_at_once(count: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(SLEEP_ECHO, stdout=subprocess.PIPE) for _ in range(count)]
    for proc in procs:
        proc.communicate()
    return time.perf_counter() - start


async def at_once(url: str, token: str, count: int) -> tuple[float, int, int]:
    """``count`` × ``sleep 0.1; echo hi`` started together on one session: (wall, good records, reads)."""
    records: list[p.TerminalRecord] = []
    async with open_bench_client(url, token) as client:
        await client.run(ECHO)  # warm the session up (first spawn, code paths)

        async def one() -> None:
            records.append(await client.run(SLEEP_ECHO))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        wall = time.perf_counter() - start
    return wall, sum(_good(r) for r in records), sum(r.read_calls for r in records)


def _stamped_good(record: p.TerminalRecord) -> bool:
    lines = record.stdout.split(b"\n")
    return record.exit_code == 0 and record.failure is None and not record.output_lost and lines[0] == b"hi" and lines[1].isdigit()


async def fan_out(url: str, token: str, sessions: int, per_session: int) -> tuple[float, int, int, dict[str, int], list[float]]:
    """``sessions`` sessions, each running ``per_session`` stamped echoes at once, all released together.

    Returns (wall, good records, reads, completions, completion lags in seconds): a lag is the
    time the client held the complete record minus the command's own last timestamp.
    """
    lags: list[float] = []
    ready = 0
    all_ready = trio.Event()
    go = trio.Event()
    records: list[p.TerminalRecord] = []

    async def session() -> None:
        nonlocal ready
        async with open_bench_client(url, token) as client:
            ready += 1
            if ready == sessions:
                all_ready.set()
            await go.wait()

            async def one() -> None:
                record = await client.run(ECHO_STAMPED)
                now = time.time_ns()
                records.append(record)
                if _stamped_good(record):
                    lags.append((now - int(record.stdout.split(b"\n")[1])) / 1e9)

            async with trio.open_nursery() as nursery:
                for _ in range(per_session):
                    nursery.start_soon(one)

    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(session)
        await all_ready.wait()
        start = time.perf_counter()
        go.set()
        # Wall time ends when every record is in, before the sessions' closing handshakes.
        while len(records) < sessions * per_session:
            await trio.sleep(0.001)
        wall = time.perf_counter() - start
    completions: dict[str, int] = {}
    for record in records:
        completions[record.completion.value] = completions.get(record.completion.value, 0) + 1
    return wall, sum(_stamped_good(r) for r in records), sum(r.read_calls for r in records), completions, lags


async def run_section(url: str, token: str, *, count: int, sessions: int, per_session: int, reps: int) -> ConcurrencyOutcome:
    section = Section("Concurrency")
    outcome = ConcurrencyOutcome(section)
    table = section.table("workload", "wall s (median)", "runs (s)", "complete records", "reads")
    local = [await trio.to_thread.run_sync(local_at_once, count) for _ in range(reps)]
    table.add(f"{count} × `sleep 0.1; echo hi`, local Popen", f"{statistics.median(local):.3f}", " / ".join(f"{w:.3f}" for w in local), f"{count}", "-")
    walls, goods, reads = [], [], []
    for _ in range(reps):
        wall, good, read_calls = await at_once(url, token, count)
        walls.append(wall)
        goods.append(good)
        reads.append(read_calls)
    outcome.fifty_wall = statistics.median(walls)
    table.add(
        f"{count} × `sleep 0.1; echo hi`, one session", f"{outcome.fifty_wall:.3f}", " / ".join(f"{w:.3f}" for w in walls),
        " / ".join(f"{g}/{count}" for g in goods), " / ".join(map(str, reads)),
    )  # fmt: skip
    total = sessions * per_session
    wall, good, read_calls, completions, lags = await fan_out(url, token, sessions, per_session)
    outcome.fanout_complete, outcome.fanout_total = good, total
    table.add(f"{total} × `echo hi; exec date` across {sessions} sessions", f"{wall:.3f}", f"{wall:.3f}", f"{good}/{total}", str(read_calls))
    if lags:
        outcome.lag_p50, outcome.lag_p99 = percentile(lags, 50), percentile(lags, 99)
        section.note(
            f"Completion lag of the {total} fan-out processes (client's clock when the complete record arrived minus the "
            f"command's last `date +%s%N`): p50 {outcome.lag_p50 * 1000:.1f} ms, p99 {outcome.lag_p99 * 1000:.1f} ms, "
            f"max {max(lags) * 1000:.1f} ms."
        )
    section.note(
        "Wall time from the first start to the last complete record (sessions are connected before the clock starts). "
        f"Completion of the fan-out records: {completions}. A record counts as complete when exit 0, stdout `hi\\n` (the fan-out's: "
        "`hi` then the stamp), no failure and no lost output."
    )
    return outcome
