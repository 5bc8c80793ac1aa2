"""Where the time goes: py-spy profiles of both ends while the default arm runs.

Profiling perturbs what it measures, so this runs on its own after the timed sections: the
default client against the default server, first one-shots of ``/usr/bin/true``, then a
stream of stdout (binary frames, then text frames). py-spy samples the server process and
this process from outside (no code in either); the tables keep the top frames by self time
over the busy samples (the event loop parked in ``epoll_wait`` is left out).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final

import trio

from ._clients import open_bench_client
from ._profile import SAMPLE_RATE, profiling, py_spy, top_frames
from ._report import Section
from ._servers import ServerAddress

TOP: Final = 12
TRUE: Final = ("/usr/bin/true",)


async def _one_shots(server: ServerAddress, calls: int) -> None:
    async with open_bench_client(server.url, server.token) as client:
        for _ in range(calls):
            await client.run(TRUE)


async def _stream(server: ServerAddress, size: int, *, binary: bool) -> None:
    async with open_bench_client(server.url, server.token, binary_output=binary) as client:
        record = await client.run(("head", "-c", str(size), "/dev/zero"), max_output_bytes=None)
        if len(record.stdout) != size:
            raise RuntimeError(f"profiled stream: {len(record.stdout)} of {size} bytes")


def run_section(server: ServerAddress, client_pid: int, *, calls: int, stream_bytes: int, directory: Path | None) -> Section:
    section = Section("Where the time goes (py-spy, default server + default client)")
    if py_spy() is None:
        section.note("skipped: py-spy is not installed (pip install -e '.[bench]')")
        return section
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        out = directory or Path(tmp)
        roles = [("server", server.pid), ("client", client_pid)]
        workloads = (
            ("one-shot", f"{calls} one-shot `/usr/bin/true`", lambda: trio.run(_one_shots, server, calls)),
            ("stream-binary", f"{stream_bytes / 1e6:.0f} MB of stdout, binary frames", lambda: trio.run(lambda: _stream(server, stream_bytes, binary=True))),
            ("stream-text", f"{stream_bytes / 1e6:.0f} MB of stdout, text frames", lambda: trio.run(lambda: _stream(server, stream_bytes, binary=False))),
        )
        for label, title, body in workloads:
            with profiling(out, f"where-{label}", roles):
                body()
            for role, _pid in roles:
                path = out / f"where-{label}-{role}.txt"
                if not path.exists():
                    section.note(f"{title} / {role}: py-spy wrote no profile")
                    continue
                total, by_self, by_inclusive = top_frames(path, TOP)
                table = section.table(
                    "self %", "frame (self time)", "inclusive %", "our frame (inclusive)",
                    caption=f"**{title} — {role}**: {total} busy samples at {SAMPLE_RATE} Hz",
                )  # fmt: skip
                for k in range(max(len(by_self), len(by_inclusive))):
                    name_s, pct_s = by_self[k] if k < len(by_self) else ("", 0.0)
                    name_i, pct_i = by_inclusive[k] if k < len(by_inclusive) else ("", 0.0)
                    table.add(f"{pct_s:.1f}" if name_s else "", f"`{name_s}`" if name_s else "", f"{pct_i:.1f}" if name_i else "", f"`{name_i}`" if name_i else "")
    section.note(
        "Self time is the frame on top of the stack (a C call such as a socket send or base64 counts in the Python frame "
        "that made it); inclusive counts every sample with the frame anywhere on the stack, shown for exec_server, "
        "exec_client and protocol frames only. "
        "`python -m benchmarks --profile DIR` keeps the raw py-spy files (collapsed stacks) of every profiled section."
    )
    return section
