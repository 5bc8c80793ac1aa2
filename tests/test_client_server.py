"""exec_client against the real server on a loopback port (the ``server`` fixture)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import exec_client
import protocol as p
from exec_client import open_client


async def test_in_order_run_is_pushed_with_zero_reads(server: Any) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            assert client.info.push_events is True
            record = await client.run(["sh", "-c", "echo hi; echo oops >&2; exit 3"])
        assert (record.exit_code, record.signal, record.stdout, record.stderr) == (3, None, b"hi\n", b"oops\n")
        assert (record.completion, record.read_calls, record.failure, record.output_lost) == (
            p.Completion.PUSHED,
            0,
            None,
            False,
        )
        assert record.sandbox_denied is False
        assert record.duration_ms is not None and record.usage is not None


async def test_streaming_handle_with_stdin(server: Any) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            handle = await client.start(["cat"], pipe_stdin=True)
            assert handle.pid is not None and handle.pid > 0
            assert await handle.write(b"first ") is p.WriteStatus.ACCEPTED
            await handle.write(b"second")
            await handle.close_stdin()
            chunks = [chunk async for chunk in handle]
            record = await handle.wait()
        assert b"".join(c.chunk for c in chunks) == b"first second" == record.stdout
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
        assert record.exit_code == 0


async def test_run_with_stdin_env_and_cwd(server: Any, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            record = await client.run(
                ["sh", "-c", 'read line; echo "$line $GREETING"; pwd'],
                stdin=b"hello\n",
                env={"GREETING": "world"},
                cwd=tmp_path,
            )
        assert record.stdout == f"hello world\n{tmp_path}\n".encode()


@pytest.mark.parametrize(
    ("delivery", "binary_output"), [("lossless", False), ("bestEffort", False), ("lossless", True)]
)
async def test_20_mib_of_binary_output_arrives_byte_exact(
    server: Any, tmp_path: Path, delivery: str, binary_output: bool
) -> None:
    payload = os.urandom(20 * 1024 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    with trio.fail_after(60):
        async with open_client(server.url, token=server.token, delivery=delivery, binary_output=binary_output) as client:
            assert client.info.binary_output is binary_output
            handle = await client.start(["cat", str(source)])
            seqs = [chunk.seq async for chunk in handle]
            record = await handle.wait()
    assert hashlib.sha256(record.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert record.stdout_omitted_bytes == 0 and record.output_lost is False
    assert seqs == sorted(set(seqs))  # yielded once each, in order
    if delivery == "lossless":
        # Nothing is dropped: every seq arrived by push, in order.
        assert seqs == list(range(1, len(seqs) + 1))
        assert (record.read_calls, record.completion) == (0, p.Completion.PUSHED)


async def test_output_past_the_cap_keeps_head_and_tail(server: Any) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            record = await client.run(["sh", "-c", "printf 0123456789abcdefghij"], max_output_bytes=8)
    assert (record.stdout, record.stdout_omitted_bytes) == (b"0123ghij", 12)


async def test_missing_program_raises_spawn_failed(server: Any) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            with pytest.raises(exec_client.SpawnFailed) as caught:
                await client.run(["/nonexistent/program"])
            # The session is still usable afterwards.
            assert (await client.run(["true"])).exit_code == 0
    assert caught.value.code == p.ErrorCode.SPAWN_FAILED
    assert caught.value.errno == 2


async def test_timeout_kills_and_reports_timed_out(server: Any) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            record = await client.run(["sh", "-c", "echo before; exec sleep 30"], timeout=0.3)
    assert record.timed_out is True
    assert record.stdout == b"before\n"
    assert (record.exit_code, record.signal) in ((128 + 9, "SIGKILL"), (128 + 15, "SIGTERM"))


async def test_terminate_and_signal(server: Any) -> None:
    with trio.fail_after(20):
        async with open_client(server.url, token=server.token) as client:
            handle = await client.start(["sleep", "30"])
            assert await handle.terminate(grace=5) is True
            record = await handle.wait()
            assert (record.exit_code, record.signal) == (128 + 15, "SIGTERM")

            handle = await client.start(["sleep", "30"])
            assert await handle.signal("kill") is True
            record = await handle.wait()
            assert (record.exit_code, record.signal) == (128 + 9, "SIGKILL")


async def test_many_concurrent_runs_complete(server: Any) -> None:
    results: dict[int, p.TerminalRecord] = {}
    with trio.fail_after(30):
        async with open_client(server.url, token=server.token) as client:

            async def one(index: int) -> None:
                results[index] = await client.run(["sh", "-c", f"echo {index}; exit {index % 7}"])

            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(one, index)
    for index, record in results.items():
        assert (record.stdout, record.exit_code) == (f"{index}\n".encode(), index % 7)


async def test_wrong_token_raises_connection_failed(server: Any) -> None:
    with trio.fail_after(10):
        with pytest.raises(exec_client.ConnectionFailed, match="401"):
            async with open_client(server.url, token="not-the-token"):
                pass  # pragma: no cover


@attrs.define
class DropProxy:
    """A TCP forwarder between client and server whose connections a test can cut."""

    target_port: int
    port: int = 0
    _scopes: list[trio.CancelScope] = attrs.Factory(list)
    accepted: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[DropProxy] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except BaseException:
            await trio.aclose_forcefully(downstream)
            raise
        try:
            with trio.CancelScope() as scope:
                self._scopes.append(scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream)
                    nursery.start_soon(self._pump, upstream, downstream)
        finally:
            # Cut (or the test's end): close both sides without any WebSocket close frame.
            await trio.aclose_forcefully(downstream)
            await trio.aclose_forcefully(upstream)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


async def test_abrupt_disconnect_resumes_and_completes_the_record(server: Any, nursery: trio.Nursery) -> None:
    target_port = int(server.url.rsplit(":", 1)[1])
    proxy = await nursery.start(DropProxy(target_port).serve)
    with trio.fail_after(20):
        async with open_client(f"ws://127.0.0.1:{proxy.port}", token=server.token) as client:
            # The second half is written only after the client saw the first and the
            # connection was cut, so it must come through the resumed session.
            handle = await client.start(["sh", "-c", "printf first; read go; printf second"], pipe_stdin=True)
            chunks = aiter(handle)
            assert (await anext(chunks)).chunk == b"first"
            proxy.cut()
            await handle.write(b"go\n")  # retried on the resumed session (writeId)
            await handle.close_stdin()
            rest = [chunk.chunk async for chunk in chunks]
            record = await handle.wait()
            assert client.resumes == 1
    assert b"".join(rest) == b"second"
    assert (record.stdout, record.exit_code, record.failure) == (b"firstsecond", 0, None)
    assert record.read_calls >= 1
    assert proxy.accepted == 2
