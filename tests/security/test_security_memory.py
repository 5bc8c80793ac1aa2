"""Whatever one authenticated client sends, the server's memory stays within its documented limits.

Each attack of the kind that once cost the server gigabytes runs against a CLI server with a
small retention cap; its resident-set high-water mark (VmHWM, reset before each attack)
must stay under ``--retain-total-bytes`` + 128 MiB. Sizes are scaled down from the original
reports, but each attack still asks the server to hold several times that bound.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Final

import pytest
import trio
import trio_websocket

from rawclient import no_leftover_processes, open_raw_client  # noqa: F401  (fixture used by name)
from security_support import MIB, ChildServer, child_server, open_plain_client

RETAIN_TOTAL: Final = 32 * MIB
HEADROOM: Final = 128 * MIB
BOUND: Final = RETAIN_TOTAL + HEADROOM
SERVER_ARGS: Final = ("--sandbox", "none", "--retain-bytes", str(8 * MIB), "--retain-total-bytes", str(RETAIN_TOTAL))

BIG_FRAME_BYTES: Final = 60 * MIB
UNREAD_READS: Final = 200  # × 1 MiB answers
UNIQUE_WRITE_IDS: Final = 30  # × 8 MiB
PENDING_WRITES: Final = 24  # × 11 MiB
HUGE_ARGV_STARTS: Final = 120  # × 1.9 MiB


def _check_peak(server: ChildServer, attack: str, capsys: pytest.CaptureFixture[str]) -> int:
    peak = server.peak_rss()
    with capsys.disabled():
        print(f"\nMEMORY {attack}: peak RSS {peak / MIB:.0f} MiB (bound {BOUND / MIB:.0f} MiB)")
    assert peak < BOUND, f"{attack}: peak RSS {peak / MIB:.0f} MiB over {BOUND / MIB:.0f} MiB"
    assert server.alive
    return peak


async def test_huge_frames_of_tiny_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    # Over the WebSocket layer's limit (2 × 16 MiB): the connection is closed (1009) while
    # the frame comes in. Between the two limits: -32005, never parsed. Within the limit
    # but of more values than the codec takes: -32005 before the parse.
    too_big = "[" + "{}," * (BIG_FRAME_BYTES // 3 - 1) + "{}]"
    oversized = "[" + "{}," * (30 * MIB // 3) + "{}]"
    many_values = "[" + "{}," * (15 * MIB // 3) + "{}]"
    with trio.fail_after(120):
        async with child_server(tmp_path, *SERVER_ARGS) as server:
            async with open_raw_client(server.url, server.token) as other:
                await other.initialize()
                server.reset_peak_rss()
                done = trio.Event()

                async def one_shot() -> None:  # another client's, while the frames come in
                    await other.run("one-shot", ["true"])
                    done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one_shot)
                    async with open_plain_client(server.url, server.token) as attacker:
                        for text in (oversized, many_values):
                            await attacker.send(text)
                            answer = await attacker.receive()
                            assert answer["error"]["code"] == -32005, answer
                        assert (await attacker.call("process/list", {}))["result"] == {"processes": []}
                    async with open_plain_client(server.url, server.token) as attacker:
                        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                            await attacker.send(too_big)
                            await attacker.receive()
                        assert closed.value.reason.code == 1009
                    await done.wait()
                assert "processes" in await other.call("process/list")
            _check_peak(server, "frames of [{},...]: 60 MiB, 30 MiB and 15 MiB", capsys)


async def test_unread_read_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    with trio.fail_after(120):
        async with child_server(tmp_path, *SERVER_ARGS) as server:
            async with open_plain_client(server.url, server.token, delivery="lossless") as attacker:
                start = {"processId": "out", "argv": ["head", "-c", str(6 * MIB), "/dev/zero"]}
                assert "result" in await attacker.call("process/start", start)
                while True:  # read it all (lossless: it waits for us) until closed
                    message = await attacker.receive()
                    if message.get("method") == "process/closed":
                        break
                server.reset_peak_rss()
                read = {"processId": "out", "afterSeq": 0, "maxBytes": MIB}
                ids = [await attacker.request("process/read", read) for _ in range(UNREAD_READS)]
                # Only now the answers are read: until here the server held what it queued.
                answered = 0
                while answered < len(ids):
                    message = await attacker.receive()
                    if message.get("id") in ids:
                        assert "result" in message, message
                        answered += 1
            _check_peak(server, f"{UNREAD_READS} unread lossless process/read answers", capsys)


async def test_unique_huge_write_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    with trio.fail_after(120):
        async with child_server(tmp_path, *SERVER_ARGS) as server:
            async with open_plain_client(server.url, server.token) as attacker:
                start = {"processId": "in", "argv": ["cat"], "pipeStdin": True}
                assert "result" in await attacker.call("process/start", start)
                server.reset_peak_rss()
                for index in range(UNIQUE_WRITE_IDS):
                    write_id = f"{index:08d}" + "w" * (8 * MIB)
                    answer = await attacker.call("process/write", {"processId": "in", "chunk": "", "writeId": write_id})
                    assert answer["error"]["code"] == -32602, answer["error"]["message"][:200]
                answer = await attacker.call("process/write", {"processId": "in", "chunk": "", "eof": True})
                assert answer["result"]["status"] == "accepted"
            _check_peak(server, f"{UNIQUE_WRITE_IDS} unique 8 MiB writeIds", capsys)


async def test_pending_huge_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    chunk = base64.b64encode(b"\0" * (11 * MIB)).decode()
    with trio.fail_after(120):
        async with child_server(tmp_path, *SERVER_ARGS) as server:
            async with open_plain_client(server.url, server.token) as attacker:
                # It never reads its stdin: every write beyond the pipe's size waits.
                start = {"processId": "deaf", "argv": ["sleep", "60"], "pipeStdin": True}
                assert "result" in await attacker.call("process/start", start)
                server.reset_peak_rss()
                ids = {await attacker.request("process/write", {"processId": "deaf", "chunk": chunk}) for _ in range(PENDING_WRITES)}
                answers = {}
                while len(answers) < PENDING_WRITES - 2:  # all but the few within the budget
                    message = await attacker.receive()
                    answers[message["id"]] = message
                assert all(answer["error"]["code"] == -32005 for answer in answers.values()), answers
                terminate = await attacker.request("process/terminate", {"processId": "deaf", "graceMs": 0})
                ids.add(terminate)
                while len(answers) < PENDING_WRITES + 1:  # the waiting ones end with the process
                    message = await attacker.receive()
                    if message.get("id") in ids:
                        answers[message["id"]] = message
                assert answers[terminate]["result"] == {"running": True}
                assert sum("error" in answer for answer in answers.values()) >= PENDING_WRITES - 2
            _check_peak(server, f"{PENDING_WRITES} pending 11 MiB writes", capsys)


async def test_starts_with_huge_argv(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_processes: None) -> None:
    # Each start holds ~1.9 MiB of argv (what exec takes) for as long as its record lives:
    # 120 of them would be ~230 MiB, kept for process/list, unless the session bounds them.
    argv = ["sleep", "30", *("a" * (120 * 1024) for _ in range(16))]
    with trio.fail_after(120):
        async with child_server(tmp_path, *SERVER_ARGS) as server:
            async with open_plain_client(server.url, server.token) as attacker:
                server.reset_peak_rss()
                codes = []
                for index in range(HUGE_ARGV_STARTS):
                    answer = await attacker.call("process/start", {"processId": f"big{index}", "argv": argv})
                    codes.append(answer["error"]["code"] if "error" in answer else 0)
                assert codes.count(0) == 8 and set(codes[8:]) == {-32005}, codes
                listing = await attacker.call("process/list", {})
                assert len(listing["result"]["processes"]) == 8
                for index in range(8):
                    await attacker.call("process/signal", {"processId": f"big{index}", "signal": "kill"})
            _check_peak(server, f"{HUGE_ARGV_STARTS} starts of 1.9 MiB argv", capsys)
