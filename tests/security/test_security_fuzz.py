"""The fuzz test: thousands of hostile messages at a live server, over WebSocket and stdio.

Asserted: the server never exits, never answers -32603 (that code is for its own bugs),
every connection keeps serving (a valid call is answered after every batch of junk), and
its peak RSS stays under ``--retain-total-bytes`` + 128 MiB. A connection may be closed
only by what the protocol says closes one (a text frame that is not UTF-8, a binary frame
that is no call, a message over the WebSocket layer's limit); a new one is then opened.
The counts are printed as one summary line per transport (``FUZZ …``) and written to
``fuzz-summary.json`` in the test's tmp dir.

``EXEC_FUZZ_SEED`` replays a run; ``EXEC_FUZZ_MESSAGES`` scales it (default 5,200 in all).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trio_websocket

from hostile import HostileMessages
from rawclient import MAX_MESSAGE_BYTES, CliServer, cli_env, no_leftover_processes, run_cli_server  # noqa: F401
from security_support import MIB, ChildServer, child_server

RETAIN_TOTAL: Final = 32 * MIB
RSS_BOUND: Final = RETAIN_TOTAL + 128 * MIB
SERVER_ARGS: Final = (
    "--sandbox", "none", "--retain-bytes", str(1 * MIB), "--retain-total-bytes", str(RETAIN_TOTAL),
    "--shutdown-grace", "0", "--log-level", "WARNING",
)  # fmt: skip
TOTAL_MESSAGES: Final = int(os.environ.get("EXEC_FUZZ_MESSAGES", "5200"))
WEBSOCKET_SHARE: Final = 0.7
BATCH: Final = 25  # hostile messages between two checks that the connection still serves
BINARY_SHARE: Final = 0.02
OVER_LIMIT_BYTES: Final = 17 * MIB  # over maxMessageBytes (16 MiB): -32005
OVER_FRAME_LIMIT_BYTES: Final = 40 * MIB  # over the WebSocket layer's 2 × 16 MiB: 1009
INTERNAL_ERROR: Final = -32603
# Close codes the protocol documents for junk: 1003 binary frame, 1007 not UTF-8, 1008
# policy, 1009 too big; 1006 (no close frame) only for a frame that is not UTF-8.
JUNK_CLOSE_CODES: Final = frozenset({1003, 1007, 1008, 1009})


@attrs.define
class Counts:
    transport: str
    seed: int
    sent: int = 0
    answers: int = 0
    errors: collections.Counter[int] = attrs.Factory(collections.Counter)
    closes: collections.Counter[int] = attrs.Factory(collections.Counter)
    internal_errors: list[str] = attrs.Factory(list)
    checks: int = 0
    server_exits: int = 0
    peak_rss_growth: int = 0

    def record(self, message: dict[str, Any], sent: dict[str, str]) -> None:
        self.answers += 1
        error = message.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            self.errors[code] += 1
            if code == INTERNAL_ERROR:
                self.internal_errors.append(f"{sent.get(str(message.get('id')), '?')[:300]} -> {error}")

    def summary(self) -> str:
        return (
            f"FUZZ {self.transport}: seed {self.seed}, {self.sent} hostile messages sent, {self.answers} answers, "
            f"{self.checks} still-serving checks passed, server exits {self.server_exits}, "
            f"-32603 answers {len(self.internal_errors)}, closes {dict(self.closes)}, "
            f"peak RSS growth {self.peak_rss_growth / MIB:.1f} MiB, errors {dict(sorted(self.errors.items(), key=str))}"
        )


def _masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame with any payload, valid UTF-8 or not (wsproto would refuse)."""
    mask = secrets.token_bytes(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x81, 0x80 | length])
    elif length < 65536:
        header = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return header + mask + masked


class FuzzConnection:
    def __init__(self, websocket: trio_websocket.WebSocketConnection, counts: Counts) -> None:
        self.websocket = websocket
        self.counts = counts
        self.sent: dict[str, str] = {}

    async def send(self, message: str | bytes, *, binary: bool = False) -> None:
        if isinstance(message, bytes) and not binary:
            await self.websocket._stream.send_all(_masked_text_frame(message))
        else:
            await self.websocket.send_message(message)
        self.counts.sent += 1

    async def check(self, tag: str) -> None:
        """A valid call is still answered: read (and record) everything up to its answer."""
        sentinel = f"check-{tag}"
        await self.websocket.send_message(json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "process/list"}))
        while True:
            raw = await self.websocket.get_message()
            message = json.loads(raw) if isinstance(raw, str) else {}
            if message.get("id") == sentinel:
                assert "result" in message, message
                self.counts.checks += 1
                return
            if "id" in message:
                self.counts.record(message, self.sent)


@contextlib.asynccontextmanager
async def fuzz_connection(server: ChildServer, counts: Counts) -> AsyncIterator[FuzzConnection]:
    headers = [(b"Authorization", f"Bearer {server.token}".encode())]
    stream: trio.abc.Stream | None = None
    try:
        async with trio_websocket.open_websocket_url(
            server.url, extra_headers=headers, max_message_size=MAX_MESSAGE_BYTES
        ) as websocket:
            stream = websocket._stream
            connection = FuzzConnection(websocket, counts)
            await websocket.send_message(
                json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"clientName": "fuzz", "protocolVersion": 1}})
            )
            assert "result" in json.loads(await websocket.get_message())
            yield connection
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _seed() -> int:
    return int(os.environ.get("EXEC_FUZZ_SEED") or secrets.randbelow(2**32))


def _report(counts: Counts, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = counts.summary()
    (tmp_path / "fuzz-summary.json").write_text(json.dumps(attrs.asdict(counts), default=str, indent=1))
    with capsys.disabled():
        print(f"\n{line}")


async def _fuzz_websocket(server: ChildServer, counts: Counts, messages: HostileMessages, total: int, cwd: Path) -> None:
    rng = messages.rng
    # Fixed points of the run (by count of messages sent): two over maxMessageBytes, one
    # over the WebSocket layer's limit.
    specials = [(total // 4, OVER_LIMIT_BYTES), (total // 2, OVER_LIMIT_BYTES), (3 * total // 4, OVER_FRAME_LIMIT_BYTES)]
    batch_number = 0
    while counts.sent < total:
        # What the batch in flight sent that may close the connection: a binary frame
        # (a documented close code), a text frame that is not UTF-8 (1007) or a message
        # over the WebSocket layer's limit (1009); for the last two a close without a close
        # frame is tolerated (1006): the server may drop the socket under our send.
        may_close = may_close_abnormally = False
        try:
            async with fuzz_connection(server, counts) as connection:
                for process_id, argv, stdin in (("cat", ["cat"], True), ("sleepy", ["sleep", "30"], False)):
                    params = {"processId": process_id, "argv": argv, "pipeStdin": stdin, "cwd": str(cwd)}
                    await connection.send(json.dumps({"jsonrpc": "2.0", "id": process_id, "method": "process/start", "params": params}))
                while counts.sent < total:
                    batch_number += 1
                    for _ in range(BATCH):
                        if specials and counts.sent >= specials[0][0]:
                            size = specials.pop(0)[1]
                            if size > OVER_LIMIT_BYTES:
                                # 1009, though the close may cut our send short (then 1006).
                                may_close = may_close_abnormally = True
                            pad = "x" * size
                            await connection.send('{"jsonrpc":"2.0","id":"big","method":"process/list","params":{"pad":"' + pad + '"}}')
                            continue
                        message = messages.next()
                        if rng.random() < BINARY_SHARE:
                            may_close = True
                            payload = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
                            await connection.send(payload if rng.random() < 0.5 else secrets.token_bytes(rng.randrange(1, 64)), binary=True)
                            continue
                        if isinstance(message, bytes):
                            may_close = may_close_abnormally = True
                        connection.sent[_id_of(message)] = message if isinstance(message, str) else repr(message)
                        await connection.send(message)
                    await connection.check(str(batch_number))
                    may_close = may_close_abnormally = False
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError) as closed:
            # A raw frame written to a socket the server has dropped: no close frame (1006).
            reason = closed.reason if isinstance(closed, trio_websocket.ConnectionClosed) else None
            code = int(reason.code) if reason is not None else 1006
            counts.closes[code] += 1
            assert may_close, f"closed ({closed!r}) by junk that must not close a connection"
            assert code in JUNK_CLOSE_CODES or (code == 1006 and may_close_abnormally), repr(closed)
        assert server.alive, "the server exited"


def _id_of(message: str | bytes) -> str:
    try:
        value = json.loads(message)
        return str(value.get("id")) if isinstance(value, dict) else "?"
    except (ValueError, RecursionError):
        return "?"


async def test_fuzz_over_websocket(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    seed = _seed()
    counts = Counts("websocket", seed)
    total = int(TOTAL_MESSAGES * WEBSOCKET_SHARE)
    messages = HostileMessages(seed, str(tmp_path))
    with trio.fail_after(120):
        async with child_server(tmp_path, *SERVER_ARGS) as server:
            baseline = server.rss()
            try:
                await _fuzz_websocket(server, counts, messages, total, tmp_path)
            finally:
                counts.server_exits = 0 if server.alive else 1
                if server.alive:
                    counts.peak_rss_growth = server.peak_rss() - baseline
                    peak = server.peak_rss()
                _report(counts, tmp_path, capsys)
            server.cli.process.send_signal(signal.SIGTERM)
            assert await server.cli.process.wait() == 0
    assert counts.sent >= total
    assert not counts.internal_errors, counts.internal_errors[:5]
    assert peak < RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB"


async def test_fuzz_over_stdio(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    seed = _seed()
    counts = Counts("stdio", seed)
    total = TOTAL_MESSAGES - int(TOTAL_MESSAGES * WEBSOCKET_SHARE)
    messages = HostileMessages(seed + 1, str(tmp_path))
    args = ["serve", "--listen", "stdio", "--token-file", str(tmp_path / "token"), *SERVER_ARGS]
    with trio.fail_after(120):
        async with run_cli_server(args, cli_env(), stdin=True) as cli:
            server = ChildServer(cli, "stdio", "")
            await cli.send_line(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"clientName": "fuzz", "protocolVersion": 1}}))
            assert "result" in json.loads(await cli.stdout_line())
            baseline = server.rss()
            sent: dict[str, str] = {}
            oversized_at = total // 2
            batch_number = 0
            try:
                while counts.sent < total:
                    batch_number += 1
                    for _ in range(BATCH):
                        if counts.sent == oversized_at:
                            line: str | bytes = '{"jsonrpc":"2.0","id":"big","method":"process/list","params":{"pad":"' + "x" * OVER_LIMIT_BYTES + '"}}'
                        else:
                            line = messages.next()
                        raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
                        # One message per line: a newline inside it makes two junk lines.
                        assert cli.process.stdin is not None
                        await cli.process.stdin.send_all(raw.replace(b"\n", b" ") + b"\n")
                        sent[_id_of(line)] = line if isinstance(line, str) else repr(line)
                        counts.sent += 1
                    sentinel = f"check-{batch_number}"
                    await cli.send_line(json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "process/list"}))
                    while True:
                        answer = await cli.stdout_line()
                        assert answer, f"the server's stdout ended: {bytes(cli.stderr)[-2000:]!r}"
                        message = json.loads(answer)
                        if message.get("id") == sentinel:
                            assert "result" in message, message
                            counts.checks += 1
                            break
                        if "id" in message:
                            counts.record(message, sent)
            finally:
                counts.server_exits = 0 if server.alive else 1
                if server.alive:
                    peak = server.peak_rss()
                    counts.peak_rss_growth = peak - baseline
                _report(counts, tmp_path, capsys)
            assert cli.process.stdin is not None
            await cli.process.stdin.aclose()  # end of input: the server drains and exits
            assert await cli.process.wait() == 0
    assert not counts.internal_errors, counts.internal_errors[:5]
    assert peak < RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB"
