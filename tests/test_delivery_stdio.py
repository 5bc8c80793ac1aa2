"""Protocol §8 on stdio: a slow reader is never disconnected; the writer waits (and bestEffort
output that does not fit is dropped, then repaired from retention)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Final

import trio

from rawclient import cli_env, no_leftover_processes, run_cli_server  # noqa: F401  (fixture used by name)
from test_delivery_support import MIB, sha256, write_random
from test_server_stdio import StdioClient, finish

SLOW_CONSUMER_TIMEOUT_S: Final = 0.3
# Longer than the timeout: over WebSocket this stall would cost the connection (1008).
STALL_S: Final = 1.0


async def test_a_stdio_client_that_stops_reading_is_waited_for_not_dropped(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    # More than the outbound queue holds (16 MiB of output), so bestEffort must drop some.
    data = write_random(tmp_path / "data", 24 * MIB)
    args = [
        "serve", "--listen", "stdio", "--sandbox", "none", "--token-file", str(tmp_path / "token"),
        "--slow-consumer-timeout", str(SLOW_CONSUMER_TIMEOUT_S), "--retain-bytes", str(32 * MIB),
    ]  # fmt: skip
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env(), stdin=True) as cli:
            client = StdioClient(cli)
            await client.call("initialize", {"clientName": "stdio-slow", "protocolVersion": 1})
            await client.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
            start = {"processId": "flood", "argv": ["cat", str(tmp_path / "data")]}
            await client.send({"jsonrpc": "2.0", "id": "start", "method": "process/start", "params": start})
            # Nobody reads the server's stdout now: its pipe fills and its writer blocks.
            await trio.sleep(STALL_S)  # the stall under test, not a synchronisation
            events = await client.events_for("flood")
            assert "result" in client.responses.pop("start")
            seqs = [m["params"]["seq"] for m in events]
            assert seqs == sorted(seqs) and events[-1]["method"] == "process/closed"
            assert len(events) < seqs[-1], "expected bestEffort to drop output while the reader stalled"
            # Whatever bestEffort dropped is repaired from retention; the record is exact.
            chunks: dict[int, bytes] = {
                m["params"]["seq"]: base64.b64decode(m["params"]["chunk"])
                for m in events
                if m["method"] == "process/output"
            }
            after = 0
            while True:
                read = await client.call("process/read", {"processId": "flood", "afterSeq": after})
                chunks.update((c["seq"], base64.b64decode(c["chunk"])) for c in read["chunks"])
                after = read["nextSeq"] - 1
                if read["nextSeq"] > read["lastSeq"]:
                    break
            assert read["exitCode"] == 0 and read["retainedFromSeq"] == 1
            assert sha256(b"".join(chunks[seq] for seq in sorted(chunks))) == sha256(data)
            # Still the same connection, still serving.
            assert [p["processId"] for p in (await client.call("process/list", {}))["processes"]] == ["flood"]
            await finish(client)
    assert all(json.loads(line) for line in client.lines)
    assert b"slow consumer" not in bytes(cli.stderr)
