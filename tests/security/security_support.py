"""What the security tests share: the CLI server as a child with a chosen environment."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import attrs
import psutil
import trio
import trio_websocket

from rawclient import MAX_MESSAGE_BYTES, CliServer, cli_env, run_cli_server

MIB: Final = 1024 * 1024


@attrs.frozen
class ChildServer:
    cli: CliServer
    url: str
    token: str

    @property
    def pid(self) -> int:
        return int(self.cli.process.pid)

    @property
    def alive(self) -> bool:
        return self.cli.process.returncode is None and self.cli.process.poll() is None

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def reset_peak_rss(self) -> None:
        """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss(self) -> int:
        """VmHWM: the high-water mark of the server's resident set, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@contextlib.asynccontextmanager
async def child_server(
    directory: Path, *extra: str, env: dict[str, str | None] | None = None, token_in_env: bool = False
) -> AsyncIterator[ChildServer]:
    """``python -m exec_server serve --listen ws://127.0.0.1:0 ...`` as a child.

    ``token_in_env``: the token is passed in ``EXEC_SERVER_TOKEN`` (else in a 0600 file).
    """
    token = secrets.token_urlsafe(32)
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--audit-denials", "off", *extra]
    overrides: dict[str, str | None] = dict(env or {})
    if token_in_env:
        overrides["EXEC_SERVER_TOKEN"] = token
    else:
        token_file = directory / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        args += ["--token-file", str(token_file)]
    async with run_cli_server(args, cli_env(**overrides)) as cli:
        url = (await cli.stdout_line()).decode().strip()
        assert url, f"the server exited before printing its URL: {bytes(cli.stderr)!r}"
        yield ChildServer(cli, url, token)


class PlainClient:
    """A WebSocket client with no reader task: what it does not ``receive`` stays unread.

    An attacker's client: it sends whatever it likes and reads (and drops) answers only
    when told to, so the server's outbound side sees a peer that does not read.
    """

    def __init__(self, websocket: trio_websocket.WebSocketConnection) -> None:
        self.websocket = websocket
        self._ids = itertools.count(1)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.websocket.send_message(message if isinstance(message, str | bytes) else json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        raw = await self.websocket.get_message()
        message = json.loads(raw)
        assert isinstance(message, dict)
        return message

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send a call; returns its id (the answer is left unread)."""
        request_id = next(self._ids)
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return request_id

    async def answer(self, request_id: Any) -> dict[str, Any]:
        """Read (and drop) messages until the answer to ``request_id``."""
        while True:
            message = await self.receive()
            if message.get("id") == request_id and "method" not in message:
                return message

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.answer(await self.request(method, params))


@contextlib.asynccontextmanager
async def open_plain_client(url: str, token: str, **initialize: Any) -> AsyncIterator[PlainClient]:
    """Connected and initialized (``initialize`` extra params, e.g. ``delivery``)."""
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    stream: trio.abc.Stream | None = None
    try:
        async with trio_websocket.open_websocket_url(
            url, extra_headers=headers, max_message_size=MAX_MESSAGE_BYTES
        ) as websocket:
            stream = websocket._stream
            client = PlainClient(websocket)
            answer = await client.call("initialize", {"clientName": "attacker", "protocolVersion": 1, **initialize})
            assert "result" in answer, answer
            await client.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
            yield client
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
