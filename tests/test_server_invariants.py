"""The five per-process invariants of protocol §6, observed on the wire.

1. seq starts at 1; one counter for output, exited and closed.
2. a process's events are written in seq order (and its start response comes first).
3. `exited` does not wait for pipe EOF; output written before the exit is sequenced before it.
4. `closed` comes after `exited` and both EOFs, last, with the last seq.
5. `exited` and `closed` are never dropped, even when output is.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from nspid import host_pid
from rawclient import (  # noqa: F401  (fixtures are used by name)
    Event,
    RawClient,
    PidWatch,
    is_gone,
    no_leftover_processes,
    open_raw_client,
    output_of,
)

PY = sys.executable


@pytest.fixture
async def client(server: Any, no_leftover_processes: None) -> AsyncIterator[RawClient]:
    """A lossless client: with bestEffort the server may drop output under load (protocol §8),
    and these tests check the order of every event, so every event must be on the wire."""
    async with open_raw_client(server.url, server.token) as raw:
        await raw.initialize(delivery="lossless")
        yield raw


def assert_well_formed(events: list[Event]) -> None:
    """Invariants 1, 2 and 4 for one process's complete event list (arrival order)."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    kinds = [e.kind for e in events]
    assert kinds.count("exited") == 1 and kinds.count("closed") == 1, kinds
    assert kinds[-1] == "closed"
    assert kinds.index("exited") < kinds.index("closed")


async def test_start_response_precedes_first_event(client: RawClient) -> None:
    with trio.fail_after(15):
        ids = {}
        # Many starts in flight at once, each printing at once: the race is as tight as it gets.
        for n in range(30):
            ids[f"p{n}"] = await client.send_request(
                "process/start", {"processId": f"p{n}", "argv": ["sh", "-c", "echo hi; echo ho >&2"]}
            )
        for process_id in ids:
            await client.events_for(process_id)
        for process_id, request_id in ids.items():
            response_at = next(i for i, m in enumerate(client.log) if m.get("id") == request_id)
            first_event_at = next(
                i for i, m in enumerate(client.log) if "id" not in m and m["params"].get("processId") == process_id
            )
            assert response_at < first_event_at, process_id
            await client.response(request_id)


async def test_seq_contiguous_shared_counter(client: RawClient) -> None:
    script = "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done; exit 5"
    with trio.fail_after(15):
        events = await client.run("mix", ["sh", "-c", script])
        assert_well_formed(events)
        # Both streams and the terminal events draw from the one counter.
        assert {e.params.get("stream") for e in events if e.kind == "output"} == {"stdout", "stderr"}
        assert output_of(events, "stdout") == b"".join(b"out%d\n" % i for i in range(1, 201))
        assert output_of(events, "stderr") == b"".join(b"err%d\n" % i for i in range(1, 201))
        # A process without output: exited is seq 1, closed seq 2.
        quiet = await client.run("quiet", ["true"])
        assert [(e.kind, e.seq) for e in quiet] == [("exited", 1), ("closed", 2)]


async def test_each_process_has_its_own_counter(client: RawClient) -> None:
    with trio.fail_after(15):
        for n in range(5):
            await client.start(f"c{n}", ["sh", "-c", f"echo {n}; echo {n} >&2"])
        for n in range(5):
            assert_well_formed(await client.events_for(f"c{n}"))


async def test_exited_does_not_wait_for_grandchild_holding_stdout(client: RawClient) -> None:
    with trio.fail_after(15):
        started = await client.start("bg", ["sh", "-c", "sleep 60 & echo $!; echo done"])
        exited = await client.wait_event("bg", lambda e: e.kind == "exited")
        printed = int(output_of(client.events_of("bg")).split()[0])  # its PID-namespace pid
        holder = host_pid(printed, started["pid"])
        watch = PidWatch(holder)
        assert exited.params["exitCode"] == 0
        # The grandchild still holds the pipe: exited, not closed.
        assert not is_gone(holder)
        read = await client.call("process/read", {"processId": "bg"})
        assert read["exited"] is True and read["closed"] is False
        assert read["nextSeq"] == exited.seq + 1
        listed = (await client.call("process/list"))["processes"]
        assert [p["state"] for p in listed if p["processId"] == "bg"] == ["exited"]
        assert not any(e.kind == "closed" for e in client.events_of("bg"))
        # Killing the tree ends the pipe: closed follows.
        await client.call("process/terminate", {"processId": "bg", "graceMs": 5000})
        events = await client.events_for("bg")
        assert_well_formed(events)
        assert output_of(events) == f"{printed}\ndone\n".encode()
        await watch.wait_exited()


async def test_output_after_exited_is_sequenced_after_it(client: RawClient) -> None:
    # The grandchild reads the (inherited) stdin through fd 3: background jobs get /dev/null.
    script = "exec 3<&0; (read line <&3; echo late:$line) & echo early"
    with trio.fail_after(15):
        await client.start("late", ["sh", "-c", script], pipeStdin=True)
        exited = await client.wait_event("late", lambda e: e.kind == "exited")
        write = {"processId": "late", "chunk": base64.b64encode(b"go\n").decode(), "eof": True}
        assert (await client.call("process/write", write))["status"] == "accepted"
        events = await client.events_for("late")
        assert_well_formed(events)
        after = [e for e in events if e.seq > exited.seq]
        assert [e.kind for e in after][-1] == "closed"
        assert b"".join(e.data for e in after if e.kind == "output") == b"late:go\n"
        assert b"".join(e.data for e in events if e.kind == "output" and e.seq < exited.seq) == b"early\n"


async def test_output_written_before_exit_is_sequenced_before_exited(client: RawClient) -> None:
    # Each writes more than one read takes (256 KiB) but less than the pipe holds (1 MiB), then
    # exits at once: the data is still in the pipe when the process is reaped.
    size = 900_000
    block = f"import os; os.write(1, b'o' * {size}); os.write(2, b'e' * {size})"
    with trio.fail_after(20):
        for n in range(12):
            await client.start(f"b{n}", [PY, "-c", block])
        for n in range(12):
            await _check_block(client, f"b{n}", size)


async def _check_block(client: RawClient, process_id: str, size: int) -> None:
    events = await client.events_for(process_id)
    assert_well_formed(events)
    exited_seq = next(e.seq for e in events if e.kind == "exited")
    assert all(e.seq < exited_seq for e in events if e.kind == "output")
    assert output_of(events, "stdout") == b"o" * size
    assert output_of(events, "stderr") == b"e" * size


async def test_large_output_then_exit_is_all_before_exited(client: RawClient) -> None:
    # More than the pipe holds: the writer blocks until the pump reads, then exits.
    with trio.fail_after(20):
        events = await client.run("head", ["head", "-c", "5000000", "/dev/zero"])
        assert_well_formed(events)
        exited_seq = next(e.seq for e in events if e.kind == "exited")
        assert all(e.seq < exited_seq for e in events if e.kind == "output")
        assert len(output_of(events)) == 5_000_000


async def test_closed_is_last_and_nothing_follows(client: RawClient) -> None:
    with trio.fail_after(15):
        events = await client.run("one", ["sh", "-c", "echo a; echo b >&2"])
        assert_well_formed(events)
        closed = events[-1]
        # A read after the fact agrees: the closed seq is the last seq.
        read = await client.call("process/read", {"processId": "one", "afterSeq": 0})
        assert read["lastSeq"] == closed.seq and read["nextSeq"] == closed.seq + 1
        # Another process's traffic afterwards brings nothing more for this one.
        await client.run("two", ["true"])
        assert client.events_of("one") == events


async def _wait_exited(pid: int) -> None:
    """Wait for our child ``pid`` to terminate without reaping it (the server reaps)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already reaped
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def test_exited_and_closed_never_dropped_when_output_is(start_server: Any, no_leftover_processes: None) -> None:
    size = 24_000_000
    server = await start_server(outbound_queue_messages=2, slow_consumer_timeout=60.0, retain_bytes=64 * 1024 * 1024)
    with trio.fail_after(30):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()  # bestEffort: output may be dropped, exited/closed may not
            argv = ["sh", "-c", f"read go; head -c {size} /dev/zero"]
            pid = (await raw.start("flood", argv, pipeStdin=True))["pid"]
            raw.pause()
            # Fire the go without reading its answer; nothing is read until the process is done.
            await raw.send_request("process/write", {"processId": "flood", "chunk": base64.b64encode(b"go\n").decode()})
            await _wait_exited(pid)
            raw.resume()
            events = await raw.events_for("flood")
            seqs = [e.seq for e in events]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            kinds = [e.kind for e in events]
            assert kinds[-2:] == ["exited", "closed"]
            assert events[-1].seq == events[-2].seq + 1
            # Output really was dropped (the queue held 2 messages): the gap is what a client repairs.
            assert len(events) < events[-1].seq
            # The repair: reads page through retention and agree with every pushed chunk.
            pushed = {e.seq: e.data for e in events if e.kind == "output"}
            read_chunks: dict[int, bytes] = {}
            after = 0
            while True:
                read = await raw.call("process/read", {"processId": "flood", "afterSeq": after})
                read_chunks.update((c["seq"], base64.b64decode(c["chunk"])) for c in read["chunks"])
                assert read["nextSeq"] > after
                after = read["nextSeq"] - 1
                if read["nextSeq"] > read["lastSeq"]:
                    break
            assert read["closed"] is True and read["lastSeq"] == events[-1].seq and read["retainedFromSeq"] == 1
            assert sorted(read_chunks) == list(range(1, events[-2].seq))
            assert all(read_chunks[seq] == data for seq, data in pushed.items())
            assert sum(map(len, read_chunks.values())) == size
            assert raw.closed is None


async def test_closed_waits_for_exit_even_after_both_pipes_end(client: RawClient) -> None:
    with trio.fail_after(15):
        # Both output pipes reach EOF long before the process exits.
        await client.start("mute", ["sh", "-c", "echo bye; exec >&- 2>&-; read x"], pipeStdin=True)
        await client.wait_output("mute", b"bye\n")
        read = await client.call("process/read", {"processId": "mute"})
        assert read["exited"] is False and read["closed"] is False
        await client.call("process/write", {"processId": "mute", "chunk": base64.b64encode(b"x\n").decode(), "eof": True})
        events = await client.events_for("mute")
        assert_well_formed(events)
        assert [e.kind for e in events] == ["output", "exited", "closed"]
