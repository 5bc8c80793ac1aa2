"""Sessions across connections (protocol §4, and client auto-resume).

Real processes, real loopback sockets. A connection is cut without a close frame by
``StallProxy.cut`` (FIN, or RST with ``reset=True``); takeover and TTL use the in-process
server so a test can wait for a connection's teardown instead of guessing how long it takes.
"""

from __future__ import annotations

import base64
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from exec_client import open_client
from rawclient import RawClient, is_gone, no_leftover_processes, open_raw_client, output_of  # noqa: F401
from nspid import host_pid
from test_delivery_support import (
    MIB,
    StallProxy,
    go_fifo,
    hook_connection_ended,
    is_running,
    read_all,
    release,
    sha256,
    subprocess_server,
    wait_closed,
    wait_pid_exit,
    write_random,
)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def contiguous_prefix(raw: RawClient, process_id: str) -> tuple[int, bytes]:
    """The last contiguous seq of the process's pushed events on ``raw`` and its stdout up to it."""
    by_seq = {e.seq: e for e in raw.events_of(process_id)}
    last = 0
    while last + 1 in by_seq:
        last += 1
    return last, output_of([by_seq[seq] for seq in range(1, last + 1)])


# --- abrupt disconnect mid-stream, then resume --------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_abrupt_disconnect_mid_stream_then_resume_gives_the_byte_exact_record(
    reset: bool, start_server: Any, tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    data = write_random(tmp_path / "data", 16 * MIB)
    server = await start_server(retain_bytes=32 * MIB)
    proxy = await nursery.start(StallProxy(port_of(server.url)).serve)
    with trio.fail_after(30):
        async with open_raw_client(proxy.url, server.token) as first:
            session_id = (await first.initialize())["sessionId"]
            await first.start("flood", ["cat", str(tmp_path / "data")])
            # Mid-stream: cut as soon as the first output arrived, while `cat` is still writing.
            await first.wait_event("flood", lambda e: e.kind == "output")
            proxy.cut(reset=reset)
            code = await wait_closed(first)
            held_seq, held = contiguous_prefix(first, "flood")
        assert code == 1006  # no close frame: abnormal closure
        assert 0 < len(held) < len(data)
        async with open_raw_client(server.url, server.token) as second:
            result = await second.initialize(resumeSessionId=session_id)
            assert result["resumed"] is True
            chunks, last = await read_all(second, "flood", after_seq=held_seq)
    assert last["exitCode"] == 0 and last["retainedFromSeq"] == 1
    assert sorted(chunks) == list(range(held_seq + 1, last["lastSeq"] - 1))  # output seqs, then exited, closed
    record = held + b"".join(chunks[seq] for seq in sorted(chunks))
    assert sha256(record) == sha256(data)


# --- takeover and the generation guard --------------------------------------


async def test_takeover_closes_the_old_connection_4001_and_its_teardown_leaves_the_session(
    start_server: Any, no_leftover_processes: None
) -> None:
    # A short TTL: had the old connection's teardown detached the session, it would expire.
    server = await start_server(detached_session_ttl=0.3)
    ended = hook_connection_ended(server.server)
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as first:
            session_id = (await first.initialize())["sessionId"]
            await first.start("echo", ["cat"], pipeStdin=True)
            await first.call("process/write", {"processId": "echo", "chunk": b64(b"one\n")})
            await first.wait_output("echo", b"one\n")
            async with open_raw_client(server.url, server.token) as second:
                result = await second.initialize(resumeSessionId=session_id)
                assert result["resumed"] is True and result["sessionId"] == session_id
                assert await wait_closed(first) == 4001
                # The old connection's teardown has run to its end...
                await ended.wait_for(1)
                # ...and did not detach the session it no longer owns.
                session = server.server.sessions[session_id]
                assert session.state.value == "attached"
                assert session.attachment is not None and session.attachment.generation == session.generation == 2
                # Events flow to the new connection, pushed (the old one hears nothing more).
                listed = await second.call("process/list")
                assert [(p["processId"], p["state"]) for p in listed["processes"]] == [("echo", "running")]
                await second.call("process/write", {"processId": "echo", "chunk": b64(b"two\n"), "eof": True})
                events = await second.events_for("echo")
                assert output_of(events) == b"two\n"
                assert [e.kind for e in events][-2:] == ["exited", "closed"]
                assert b"two" not in output_of(first.events_of("echo"))
                # The whole record, read on the new connection: nothing lost across the takeover.
                chunks, last = await read_all(second, "echo")
                assert b"".join(chunks[seq] for seq in sorted(chunks)) == b"one\ntwo\n"
                assert last["exitCode"] == 0
            assert server.server.sessions[session_id] is session


async def test_resuming_an_unknown_session_is_refused(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            error = await raw.expect_error(
                "initialize", {"clientName": "t", "protocolVersion": 1, "resumeSessionId": "no-such-session"}, -32602
            )
            assert "session" in error.message
            # The connection is still usable: a fresh initialize works.
            assert (await raw.initialize())["resumed"] is False


# --- TTL expiry kills the whole tree --------------------------------------------


@pytest.mark.parametrize(
    ("delivery", "tail"),
    [("bestEffort", "wait"), ("lossless", "exec yes")],
    ids=["bestEffort-quiet", "lossless-flooding-held-while-detached"],
)
async def test_ttl_expiry_kills_the_whole_tree_grandchildren_included(
    delivery: str, tail: str, start_server: Any, no_leftover_processes: None
) -> None:
    ttl = 0.5
    server = await start_server(detached_session_ttl=ttl)
    # One grandchild in the command's process group, one that left it with setsid; then the
    # command waits quietly, or floods (a detached lossless session holds it in write()).
    script = f"sleep 300 & echo $!; setsid sleep 300 & echo $!; {tail}"
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            session_id = (await raw.initialize(delivery=delivery))["sessionId"]
            pid = (await raw.start("tree", ["sh", "-c", script]))["pid"]
            await raw.wait_until(lambda: output_of(raw.events_of("tree")).count(b"\n") >= 2)
            printed = output_of(raw.events_of("tree")).split(b"\n")[:2]
            grandchildren = [host_pid(int(line), pid) for line in printed]
        tree = [pid, *grandchildren]
        assert len(tree) == 3 and all(is_running(member) for member in tree)
        # The client left (close 1000): the session is detached; after the TTL every member dies.
        with trio.fail_after(ttl + 10):
            for member in tree:
                await wait_pid_exit(member)
        assert all(is_gone(member) for member in tree)
        # And the session is forgotten.
        async with open_raw_client(server.url, server.token) as again:
            await again.expect_error(
                "initialize", {"clientName": "t", "protocolVersion": 1, "resumeSessionId": session_id}, -32602
            )


# --- client auto-resume, end to end -------------------------------------------------------


@pytest.mark.parametrize("delivery", ["bestEffort", "lossless"])
async def test_client_run_survives_a_cut_connection_and_completes_recovered(
    delivery: str,
    start_server: Any, tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    first = write_random(tmp_path / "first", 8 * MIB)
    second = write_random(tmp_path / "second", 8 * MIB)
    fifo = go_fifo(tmp_path)
    server = await start_server(retain_bytes=32 * MIB)
    proxy = await nursery.start(StallProxy(port_of(server.url)).serve)
    argv = ["sh", "-c", f"cat {tmp_path / 'first'}; cat {fifo} >/dev/null; cat {tmp_path / 'second'}"]
    with trio.fail_after(30):
        async with open_client(proxy.url, token=server.token, delivery=delivery) as client:
            records = []

            async def run() -> None:
                records.append(await client.run(argv, max_output_bytes=None))

            async with trio.open_nursery() as runs:
                runs.start_soon(run)
                # The FIFO opens once the first 8 MiB are written: cut while they are in flight.
                await release(fifo)
                proxy.cut()
            (record,) = records
            assert client.resumes == 1
    assert proxy.accepted == 2
    assert record.failure is None and record.exit_code == 0
    assert sha256(record.stdout) == sha256(first + second)
    assert record.completion == "recovered" and record.read_calls >= 1


async def test_client_that_cannot_resume_within_the_ttl_ends_with_failure_not_an_exit_code(
    start_server: Any, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    ttl = 1.0
    server = await start_server(detached_session_ttl=ttl)
    proxy = await nursery.start(StallProxy(port_of(server.url)).serve)
    with trio.fail_after(20):
        async with open_client(proxy.url, token=server.token) as client:
            handle = await client.start(["sh", "-c", "echo started; exec sleep 300"])
            assert handle.pid is not None
            chunks = aiter(handle)
            assert (await anext(chunks)).chunk == b"started\n"
            proxy.refuse = True  # every reconnect fails from now on
            proxy.cut()
            record = await handle.wait()
            assert client.resumes == 0
        # The server's TTL then kills what the lost session left running.
        with trio.fail_after(ttl + 10):
            await wait_pid_exit(handle.pid)
    assert record.failure is not None and "resume" in record.failure
    assert record.exit_code is None and record.signal is None
    assert record.stdout == b"started\n"
    assert proxy.accepted >= 2  # it did try to reconnect


@pytest.mark.parametrize("catch_up_delay", [0.0, 0.2], ids=["prompt-catch-up", "slow-catch-up"])
async def test_takeover_of_a_lossless_session_whose_child_is_held_completes_exactly(
    start_server: Any, tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None, catch_up_delay: float
) -> None:
    """The old connection is stalled (its queue full, the child held by lossless back-pressure)
    when a new connection takes the session over: the held child must move on to the new
    connection, and old pushed + new read + new pushed must be the exact output — also when
    the new connection sends its catch-up read late (a busy client): lossless must not let the
    live flow evict what that read needs."""
    data = write_random(tmp_path / "data", 16 * MIB)
    fifo = go_fifo(tmp_path)
    server = await start_server()
    proxy = await nursery.start(StallProxy(port_of(server.url)).serve)
    argv = ["sh", "-c", f"cat {fifo} >/dev/null; exec cat {tmp_path / 'data'}"]
    with trio.fail_after(30):
        async with open_raw_client(proxy.url, server.token) as old:
            session_id = (await old.initialize(delivery="lossless"))["sessionId"]
            pid = (await old.start("held", argv))["pid"]
            proxy.stall()
            await release(fifo)
            await _wait_until_held(pid)
            async with open_raw_client(server.url, server.token) as new:
                assert (await new.initialize(resumeSessionId=session_id, delivery="lossless"))["resumed"] is True
                if catch_up_delay:
                    await trio.sleep(catch_up_delay)  # the slow catch-up under test, not a synchronisation
                held_seq, held = contiguous_prefix(old, "held")
                chunks, last = await read_all(new, "held", after_seq=held_seq)
                # Whatever the new connection got pushed agrees with what it read.
                for event in new.events_of("held"):
                    if event.kind == "output":
                        assert chunks.get(event.seq, event.data) == event.data
            proxy.cut()
    assert last["exitCode"] == 0
    # Nothing was evicted before the new connection read it: every seq is there.
    assert sorted(chunks) == list(range(held_seq + 1, last["lastSeq"] - 1)), "output evicted before the catch-up read"
    assert sha256(held + b"".join(chunks[seq] for seq in sorted(chunks))) == sha256(data)


async def _wait_until_held(pid: int) -> None:
    from test_delivery import wait_until_writes_stall

    await wait_until_writes_stall(pid)
    assert is_running(pid)


async def test_client_gives_up_at_once_when_a_restarted_server_no_longer_has_the_session(
    tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    """The server restarted (same address, same token, new state): the resume is refused for
    good on the first attempt, so the record must end with `failure` then, not after ~27 s."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with trio.fail_after(30):
        async with subprocess_server(tmp_path / "a", "--shutdown-grace", "0") as first:
            proxy = await nursery.start(StallProxy(port_of(first.url)).serve)
            async with open_client(proxy.url, token=first.token) as client:
                handle = await client.start(["sh", "-c", "echo started; exec sleep 300"])
                chunks = aiter(handle)
                assert (await anext(chunks)).chunk == b"started\n"
                proxy.refuse = True  # no reconnect reaches anything until the new server is up
                proxy.cut()
                # The old server goes away (its commands with it: two signals kill every tree).
                os.kill(first.pid, signal.SIGTERM)
                await first.wait_stderr(b"draining")
                os.kill(first.pid, signal.SIGTERM)
                await first.process.wait()
                async with subprocess_server(tmp_path / "b", token=first.token) as second:
                    proxy.target_port = port_of(second.url)
                    proxy.refuse = False
                    refused_at = trio.current_time()
                    # The bound under test: a few backoff steps, far below 0.9 x 30 s.
                    with trio.move_on_after(3):
                        record = await handle.wait()
                    gave_up_after = trio.current_time() - refused_at
                    assert handle.record is not None, f"no record {gave_up_after:.1f} s after the refusal"
    assert record.failure is not None and record.exit_code is None


@pytest.mark.parametrize("delivery", ["bestEffort", "lossless"])
async def test_a_process_that_ends_while_detached_is_completed_by_the_resume(
    delivery: str, start_server: Any, tmp_path: Path, nursery: trio.Nursery, no_leftover_processes: None
) -> None:
    """exited/closed fall into the gap while nobody is attached; the resumed client's read has them."""
    data = write_random(tmp_path / "data", 2 * MIB)
    fifo = go_fifo(tmp_path)
    server = await start_server()
    proxy = await nursery.start(StallProxy(port_of(server.url)).serve)
    argv = ["sh", "-c", f"echo first; cat {fifo} >/dev/null; cat {tmp_path / 'data'}; exit 3"]
    with trio.fail_after(20):
        async with open_client(proxy.url, token=server.token, delivery=delivery) as client:
            handle = await client.start(argv, max_output_bytes=None)
            assert handle.pid is not None
            chunks = aiter(handle)
            assert (await anext(chunks)).chunk == b"first\n"
            proxy.refuse = True  # reconnects fail until the process is gone
            proxy.cut()
            await release(fifo)
            # Detached bestEffort: the output is retained. Detached lossless: the pump holds
            # the pipe, so the process can only finish once the resume lets it.
            if delivery == "bestEffort":
                await wait_pid_exit(handle.pid)
            proxy.refuse = False
            record = await handle.wait()
            assert client.resumes == 1
    assert record.failure is None and (record.exit_code, record.signal) == (3, None)
    assert record.stdout == b"first\n" + data
    if delivery == "bestEffort":
        assert record.completion == "recovered" and record.read_calls >= 1
    else:
        # Lossless: the resume's read repairs the gap, or, when the pump had not yet sent
        # anything past the cut, the resumed stream alone holds the rest in order.
        assert record.completion in ("recovered", "pushed")
