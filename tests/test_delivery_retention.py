"""Retention and release (protocol §7): the server-wide cap,
``retainAfterCloseMs`` expiry, and the bounded tombstone set. Raw JSON over a real socket.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import trio

from rawclient import RawClient, no_leftover_processes, open_raw_client  # noqa: F401  (fixture used by name)
from test_delivery_support import MIB, write_random


async def read_from_start(raw: RawClient, process_id: str) -> tuple[bytes, dict[str, Any]]:
    """Every retained stdout byte of a closed process, paged from seq 0; and the last result."""
    kept = b""
    after = 0
    while True:
        result = await raw.call("process/read", {"processId": process_id, "afterSeq": after})
        kept += b"".join(base64.b64decode(c["chunk"]) for c in result["chunks"] if c["stream"] == "stdout")
        after = result["nextSeq"] - 1
        if result["nextSeq"] > result["lastSeq"]:
            return kept, result


async def test_the_total_cap_evicts_across_processes_and_every_process_says_how_much(
    start_server: Any, tmp_path: Path, no_leftover_processes: None
) -> None:
    sizes = {"a": 3 * MIB, "b": 3 * MIB, "c": 1 * MIB}
    data = {name: write_random(tmp_path / name, size) for name, size in sizes.items()}
    # Each process alone fits its own cap; together they are over the server's total.
    server = await start_server(retain_bytes=4 * MIB, retain_total_bytes=4 * MIB)
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize(delivery="lossless")
            for name in sizes:
                await raw.run(name, ["cat", str(tmp_path / name)])
            results = {name: await read_from_start(raw, name) for name in sizes}
    total_kept = 0
    for name, (kept, result) in results.items():
        evicted = result["evictedBytes"]["stdout"]
        # Exact accounting: what is kept plus what was evicted is what was produced, and the
        # kept bytes are the newest ones.
        assert evicted + len(kept) == sizes[name], name
        assert kept == data[name][len(data[name]) - len(kept) :], name
        assert (result["retainedFromSeq"] > 1) == (evicted > 0), (name, result["retainedFromSeq"], evicted)
        total_kept += len(kept)
    assert total_kept <= 4 * MIB
    assert sum(result["evictedBytes"]["stdout"] for _kept, result in results.values()) >= sum(sizes.values()) - 4 * MIB
    # The biggest retainer pays first: the last, small process kept everything.
    assert results["c"][1]["evictedBytes"]["stdout"] == 0


async def test_a_closed_record_expires_after_retain_after_close(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            await raw.run("brief", ["echo", "hi"], retainAfterCloseMs=100)
            await raw.run("kept", ["echo", "hi"])
            # The expiry is the behaviour under test: ask until it happened (bounded above).
            while True:
                response = await raw.request("process/read", {"processId": "brief", "afterSeq": 0})
                if "error" in response:
                    break
                await trio.sleep(0.05)
            assert response["error"]["code"] == -32001
            # Its id stays taken (a tombstone), and the other record is untouched.
            await raw.expect_error("process/start", {"processId": "brief", "argv": ["true"]}, -32002)
            assert (await raw.call("process/read", {"processId": "kept", "afterSeq": 0}))["closed"] is True


async def test_tombstones_are_bounded_oldest_first(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(max_tombstones=2)
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            for name in ("one", "two", "three"):
                await raw.run(name, ["true"])
                await raw.call("process/release", {"processId": name})
            # The two newest are remembered as released; the oldest is forgotten entirely.
            for name in ("two", "three"):
                await raw.expect_error("process/read", {"processId": name}, -32003)
            await raw.expect_error("process/read", {"processId": "one"}, -32001)
            # A forgotten id may be used again.
            await raw.run("one", ["true"])
