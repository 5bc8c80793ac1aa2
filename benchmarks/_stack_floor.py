"""The stack floor: the least any server on this stack (trio + trio-websocket, separate process) can do.

``python -m benchmarks._stack_floor`` serves on a free loopback port (printed on stdout).
Each text message makes it spawn ``/usr/bin/true`` exactly like exec_server does (vfork
Popen, own process group, pidfd wait) and answer with one message. No JSON-RPC, no events,
no output pipes: the ``stack-floor`` latency arm tells how much of ``pushed`` is the
protocol and server, and how much is the transport plus a cross-process spawn.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Final

import trio
import trio_websocket

TRUE: Final = ("/usr/bin/true",)


async def _handle(request: trio_websocket.WebSocketRequest) -> None:
    websocket = await request.accept()
    while True:
        try:
            await websocket.get_message()
        except trio_websocket.ConnectionClosed:
            return
        child = subprocess.Popen(TRUE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
        pidfd = os.pidfd_open(child.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        os.waitpid(child.pid, 0)
        child.returncode = 0
        await websocket.send_message("done")


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, _handle, "127.0.0.1", 0, None)
        print(f"ws://127.0.0.1:{server.port}", flush=True)


@contextlib.contextmanager
def stack_floor_server() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks._stack_floor"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready:
            raise RuntimeError("stack-floor server did not start")
        yield proc.stdout.readline().decode().strip()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


async def once(websocket: trio_websocket.WebSocketConnection) -> tuple[float, int]:
    start = time.perf_counter()
    await websocket.send_message("spawn")
    await websocket.get_message()
    return time.perf_counter() - start, 0


if __name__ == "__main__":
    trio.run(_serve)
