"""``exec-server serve --listen stdio``: newline-delimited JSON on stdin/stdout, logs on stderr only."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from nspid import host_pid
from rawclient import CliServer, PidWatch, cli_env, no_leftover_processes, run_cli_server  # noqa: F401


class StdioClient:
    """Drives the server over its stdin/stdout; every stdout line must be one JSON-RPC message."""

    def __init__(self, cli: CliServer) -> None:
        self.cli = cli
        self.lines: list[bytes] = []
        self.log: list[dict[str, Any]] = []
        self.responses: dict[Any, dict[str, Any]] = {}
        self._ids = 0

    async def _read_one(self) -> dict[str, Any]:
        line = await self.cli.stdout_line()
        assert line, f"stdout ended; stderr: {bytes(self.cli.stderr)[-2000:]!r}"
        self.lines.append(line)
        message = json.loads(line)  # anything else on stdout is a bug
        assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line[:200]
        self.log.append(message)
        if "id" in message and "method" not in message:
            self.responses[message["id"]] = message
        return message

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.cli.send_line(message if isinstance(message, str) else json.dumps(message))

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        request_id = self._ids
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while request_id not in self.responses:
            await self._read_one()
        return self.responses.pop(request_id)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        response = await self.request(method, params)
        assert "result" in response, response
        return response["result"]

    def events_of(self, process_id: str) -> list[dict[str, Any]]:
        return [m for m in self.log if "id" not in m and m["params"].get("processId") == process_id]

    async def events_for(self, process_id: str) -> list[dict[str, Any]]:
        while not any(m["method"] == "process/closed" for m in self.events_of(process_id)):
            await self._read_one()
        return self.events_of(process_id)

    async def next_message(self) -> dict[str, Any]:
        return await self._read_one()


def stdout_of(events: list[dict[str, Any]], stream: str = "stdout") -> bytes:
    return b"".join(
        base64.b64decode(m["params"]["chunk"])
        for m in sorted(events, key=lambda m: m["params"]["seq"])
        if m["method"] == "process/output" and m["params"]["stream"] == stream
    )


@pytest.fixture
async def stdio(tmp_path: Path, no_leftover_processes: None) -> AsyncIterator[StdioClient]:
    args = ["serve", "--listen", "stdio", "--sandbox", "none", "--token-file", str(tmp_path / "token")]
    async with run_cli_server(args, cli_env(), stdin=True) as cli:
        yield StdioClient(cli)


async def finish(client: StdioClient) -> None:
    """Close the server's stdin: it must drain, exit 0 and leave only JSON on stdout."""
    assert client.cli.process.stdin is not None
    await client.cli.process.stdin.aclose()
    while line := await client.cli.stdout_line():
        client.lines.append(line)
        json.loads(line)
    assert await client.cli.process.wait() == 0


async def test_stdio_end_to_end(stdio: StdioClient) -> None:
    with trio.fail_after(30):
        result = await stdio.call("initialize", {"clientName": "stdio-test", "protocolVersion": 1})
        assert result["capabilities"]["pushEvents"] is True and result["sessionId"]
        await stdio.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        script = r"echo out; printf '\000\377\376'; echo err >&2; exit 4"
        started = await stdio.call("process/start", {"processId": "s1", "argv": ["sh", "-c", script]})
        assert started["processId"] == "s1" and started["pid"] > 0
        events = await stdio.events_for("s1")
        assert [m["params"]["seq"] for m in events] == list(range(1, len(events) + 1))
        assert [m["method"] for m in events][-2:] == ["process/exited", "process/closed"]
        assert stdout_of(events) == b"out\n\x00\xff\xfe"
        assert stdout_of(events, "stderr") == b"err\n"
        exited = events[-2]["params"]
        assert exited["exitCode"] == 4 and exited["signal"] is None and exited["sandboxDenied"] is False
        # The start response came before the process's first event.
        start_at = next(i for i, m in enumerate(stdio.log) if m.get("result", {}).get("processId") == "s1")
        first_event_at = stdio.log.index(events[0])
        assert start_at < first_event_at
        read = await stdio.call("process/read", {"processId": "s1", "afterSeq": 0})
        assert read["closed"] is True and read["exitCode"] == 4
        assert [p["processId"] for p in (await stdio.call("process/list", {}))["processes"]] == ["s1"]
        assert await stdio.call("process/release", {"processId": "s1"}) == {}
        await finish(stdio)
    # Every stdout line was a JSON-RPC message; the logs went to stderr.
    assert all(line.startswith(b"{") for line in stdio.lines)
    assert stdio.cli.stderr


async def test_stdio_stdin_and_signals(stdio: StdioClient) -> None:
    with trio.fail_after(30):
        await stdio.call("initialize", {"clientName": "stdio-test", "protocolVersion": 1})
        await stdio.call("process/start", {"processId": "cat", "argv": ["cat"], "pipeStdin": True})
        chunk = base64.b64encode(b"through stdio\n").decode()
        assert (await stdio.call("process/write", {"processId": "cat", "chunk": chunk, "eof": True}))["status"] == "accepted"
        assert stdout_of(await stdio.events_for("cat")) == b"through stdio\n"
        await stdio.call("process/start", {"processId": "sl", "argv": ["sleep", "60"]})
        assert (await stdio.call("process/signal", {"processId": "sl", "signal": "kill"}))["delivered"] is True
        exited = (await stdio.events_for("sl"))[-2]["params"]
        assert exited["exitCode"] == 137 and exited["signal"] == "SIGKILL"
        await finish(stdio)


async def test_stdio_bad_input_keeps_serving(stdio: StdioClient) -> None:
    with trio.fail_after(30):
        await stdio.send("this is not json")
        error = await stdio.next_message()
        assert error["id"] is None and error["error"]["code"] == -32700
        # Blank lines are not messages.
        await stdio.send("")
        await stdio.send("   ")
        response = await stdio.request("process/list", {})
        assert response["error"]["code"] == -32600  # before initialize
        await stdio.call("initialize", {"clientName": "stdio-test", "protocolVersion": 1})
        response = await stdio.request("process/start", {"processId": "x"})
        assert response["error"]["code"] == -32602
        assert any(e.endswith("@ $.params.argv") for e in response["error"]["data"]["errors"])
        response = await stdio.request("nope/nope", {})
        assert response["error"]["code"] == -32601
        assert (await stdio.call("process/list", {}))["processes"] == []
        await finish(stdio)


async def test_stdio_binary_output_stays_json_and_big_output_is_exact(stdio: StdioClient, tmp_path: Path) -> None:
    payload = hashlib.shake_256(b"stdio").digest(3 * 1024 * 1024)
    (tmp_path / "blob").write_bytes(payload)
    with trio.fail_after(30):
        # Binary frames do not exist on stdio: the server says so and sends base64 JSON.
        result = await stdio.call(
            "initialize", {"clientName": "stdio-test", "protocolVersion": 1, "binaryOutput": True, "delivery": "lossless"}
        )
        assert result["capabilities"]["binaryOutput"] is False
        await stdio.call("process/start", {"processId": "big", "argv": ["cat", str(tmp_path / "blob")]})
        events = await stdio.events_for("big")
        assert [m["params"]["seq"] for m in events] == list(range(1, len(events) + 1))
        assert stdout_of(events) == payload
        await finish(stdio)


async def test_stdio_eof_ends_server_and_kills_processes(stdio: StdioClient) -> None:
    with trio.fail_after(30):
        await stdio.call("initialize", {"clientName": "stdio-test", "protocolVersion": 1})
        pid = (await stdio.call("process/start", {"processId": "orphan", "argv": ["sleep", "60"]}))["pid"]
        # A grandchild that left the group must not outlive the server either.
        tree = await stdio.call(
            "process/start", {"processId": "tree", "argv": ["sh", "-c", "setsid sh -c 'echo $$; exec sleep 60' & wait"]}
        )
        while not stdout_of(stdio.events_of("tree")).endswith(b"\n"):
            await stdio.next_message()
        # It printed its PID-namespace pid.
        grandchild = PidWatch(host_pid(int(stdout_of(stdio.events_of("tree"))), tree["pid"]))
        child = PidWatch(pid)
        await finish(stdio)
        await child.wait_exited()
        await grandchild.wait_exited()


async def test_stdio_oversized_and_undecodable_lines(stdio: StdioClient) -> None:
    assert stdio.cli.process.stdin is not None
    with trio.fail_after(30):
        await stdio.call("initialize", {"clientName": "stdio-test", "protocolVersion": 1})
        # Over the 16 MiB default limit: answered -32005, the rest of the line is skipped.
        head = '{"jsonrpc":"2.0","id":77,"method":"process/start","params":{"processId":"h","argv":["echo","'
        await stdio.send(head + "x" * (17 * 1024 * 1024) + '"]}}')
        error = await stdio.next_message()
        assert error["error"]["code"] == -32005
        # Not UTF-8 at all: a parse error.
        await stdio.cli.process.stdin.send_all(b'{"id": 5, "method": "\xff\xfe"}\n')
        error = await stdio.next_message()
        assert error["error"]["code"] == -32700 and error["id"] is None
        # Still serving, and the oversized start never ran.
        assert (await stdio.call("process/list", {}))["processes"] == []
        await finish(stdio)
