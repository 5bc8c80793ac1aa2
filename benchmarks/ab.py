"""``python -m benchmarks.ab BASE [--calls N] [--fanout SESSIONS PER_SESSION]``: an optimisation's before/after.

Starts the default server from two checkouts — BASE (a directory holding another checkout,
e.g. ``git worktree add /tmp/base main``) and this one — and measures both in the same run,
alternating call by call (one-shot ``/usr/bin/true`` through the default client, with local
``subprocess.run`` interleaved as the floor) and round by round (the fan-out's completion
lag). Only the servers differ: the client is this checkout's. Each optimisation in
RESULTS.md's notes was kept on a gain measured this way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from . import _servers
from ._concurrency import fan_out
from ._stats import percentile

TRUE = ["/usr/bin/true"]


@contextlib.contextmanager
def _server_from(tree: Path, sandbox: str | None) -> Iterator[_servers.ServerAddress]:
    # server_process puts REPO_ROOT first on the child's PYTHONPATH: point it at the tree.
    saved = _servers.REPO_ROOT
    _servers.REPO_ROOT = tree  # type: ignore[misc]
    try:
        with _servers.server_process(sandbox=sandbox) as server:
            yield server
    finally:
        _servers.REPO_ROOT = saved  # type: ignore[misc]


async def _one_shots(servers: dict[str, _servers.ServerAddress], calls: int) -> dict[str, list[float]]:
    import exec_client

    samples: dict[str, list[float]] = {name: [] for name in [*servers, "subprocess.run"]}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(exec_client.open_client(s.url, token=s.token)) for name, s in servers.items()}
        for client in clients.values():
            for _ in range(10):
                await client.run(TRUE)
        for _ in range(calls):
            for name, client in clients.items():
                began = time.perf_counter()
                await client.run(TRUE)
                samples[name].append(time.perf_counter() - began)
            began = time.perf_counter()
            subprocess.run(TRUE, check=True)
            samples["subprocess.run"].append(time.perf_counter() - began)
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("base", type=Path, help="the other checkout (the 'before')")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--sandbox", default=None, help="the servers' --sandbox (default: as shipped)")
    parser.add_argument("--fanout", type=int, nargs=2, metavar=("SESSIONS", "PER_SESSION"), default=None)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    trees = {"before": args.base.resolve(), "after": _servers.REPO_ROOT}
    print(f"load average before: {os.getloadavg()}")
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(_server_from(tree, args.sandbox)) for name, tree in trees.items()}
        samples = trio.run(_one_shots, servers, args.calls)
        for name, values in samples.items():
            ms = [v * 1000 for v in values]
            print(f"one-shot {name:>14}: p50 {percentile(ms, 50):.3f} ms, p99 {percentile(ms, 99):.3f} ms ({len(ms)} calls)")
        if args.fanout:
            sessions, per_session = args.fanout
            for _ in range(args.rounds):
                for name, server in servers.items():
                    wall, good, _reads, _completions, lags = trio.run(fan_out, server.url, server.token, sessions, per_session)
                    ms = [lag * 1000 for lag in lags]
                    print(
                        f"fan-out {name:>6}: {sessions * per_session} processes, wall {wall:.3f} s, {good} complete, "
                        f"lag p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms"
                    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
