"""Shared fixtures: a real server on a loopback port, and a raw JSON-RPC client for it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from exec_server import Server, ServerConfig, serve_websocket
from exec_server.sandbox import Sandbox, SandboxSettings
from protocol import SandboxMode

# The CLI's control master (exec_client/_control.py) outlives the call that starts it: here
# each CLI call runs on its own unless its test asks for a master (tests/test_cli.py).
os.environ["EXEC_CLIENT_CONTROL_PERSIST"] = "0"

# Most protocol tests run commands unsandboxed so that they test the protocol alone; the
# sandbox has its own tests, and `sandboxed_server` runs the real thing.
UNSANDBOXED: Any = SandboxSettings(default_mode=SandboxMode.NONE, allow_unsandboxed=True, audit_denials="off")


@attrs.frozen
class RunningServer:
    url: str
    token: str
    server: Server
    listener: trio.CancelScope

    @property
    def auth_header(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", f"Bearer {self.token}".encode())]


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> StartServer:
    """Start a real server on 127.0.0.1:0; keyword arguments override ``ServerConfig``."""

    async def start(**overrides: Any) -> RunningServer:
        overrides.setdefault("sandbox", UNSANDBOXED)
        config = ServerConfig(token=secrets.token_urlsafe(32), **overrides)
        server = Server(config, Sandbox.create(config.sandbox))
        await nursery.start(server.run)
        listener = trio.CancelScope()

        async def listen(*, task_status: trio.TaskStatus[Any]) -> None:
            with listener:
                await serve_websocket(server, "127.0.0.1", 0, task_status=task_status)

        ws_server = await nursery.start(listen)
        return RunningServer(f"ws://127.0.0.1:{ws_server.port}", config.token, server, listener)

    return start


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()
