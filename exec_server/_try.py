"""``exec-server try``: a server on a free loopback port, one command through the real client.

The quickest end-to-end check on a fresh machine: the same server, sandbox, WebSocket and
client a deployment uses, with a throwaway in-memory token.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Callable

import trio

from ._config import ServerConfig
from ._server import Server
from ._websocket import serve_websocket
from .sandbox import Sandbox

DEMO_ARGV = [
    "sh",
    "-c",
    'echo "hello from $(uname -n) as uid $(id -u)"; '
    'touch /etc/exec-server-probe 2>/dev/null || echo "(the sandbox blocked that write, as it should)"',
]


async def _try(argv: list[str], config: ServerConfig) -> int:
    from exec_client import open_client

    server = Server(config, Sandbox.create(config.sandbox))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        ws_server = await nursery.start(serve_websocket, server, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{ws_server.port}"
        print(f"exec-server: serving {url}; running {argv!r}", file=sys.stderr, flush=True)
        async with open_client(url, token=config.token) as client:
            handle = await client.start(argv)
            async for chunk in handle:
                out = sys.stdout if chunk.stream.value == "stdout" else sys.stderr
                out.buffer.write(chunk.chunk)
                out.flush()
            record = await handle.wait()
        summary = {
            "exitCode": record.exit_code,
            "signal": record.signal,
            "sandboxType": handle.sandbox_type,
            "sandboxDenied": record.sandbox_denied,
            "denials": [f"{d.blocker} {d.target}" for d in record.denials],
            "durationMs": record.duration_ms,
            "completion": record.completion.value,
            "readCalls": record.read_calls,
        }
        print("exec-server: record " + json.dumps(summary), file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()
    if record.exit_code is None:
        return 255
    return record.exit_code


def try_command(args: argparse.Namespace, make_config: Callable[[argparse.Namespace, str], ServerConfig]) -> int:
    argv = list(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    return trio.run(_try, argv or DEMO_ARGV, make_config(args, secrets.token_urlsafe(32)))
