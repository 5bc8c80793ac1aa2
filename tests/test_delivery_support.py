"""Shared tools of the delivery, session and shutdown tests; no tests of its own.

- ``StallProxy``: a TCP forwarder between a client and the server that a test can *stall*
  (stop reading what the server sends, so the server's socket and queue fill exactly as
  with a client that stopped reading) and *cut* (close both sides without a WebSocket
  close frame, with FIN or RST).
- ``SubprocessServer``: ``python -m exec_server serve`` as a child, for RSS, SIGTERM and
  exit-code measurements; its stderr is watched so a test can wait for a log line.
- ``wait_pid_exit``: wait for any pid to terminate through a pidfd (no polling).
- ``go_fifo``/``release``: a gate a command blocks on until the test opens it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import attrs
import psutil
import pytest
import trio

from rawclient import CliServer, RawClient, cli_env, run_cli_server

MIB: Final = 1024 * 1024
# The proxy's socket towards the server: a small fixed receive buffer (no autotuning), so a
# stall holds back the server after a few hundred KiB rather than after tens of MiB.
PROXY_RECEIVE_BUFFER: Final = 64 * 1024
PROXY_READ_BYTES: Final = 64 * 1024


# --- a forwarder the test controls ----------------------------------------------------------


@attrs.define(eq=False)
class _Pair:
    downstream: trio.SocketStream
    upstream: trio.SocketStream
    scope: trio.CancelScope


@attrs.define(eq=False)
class StallProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``, one upstream per connection."""

    target_port: int
    port: int = 0
    accepted: int = 0
    # Bytes forwarded server -> client, over all connections.
    forwarded_down: int = 0
    _flowing: trio.Event = attrs.Factory(trio.Event)
    _pairs: list[_Pair] = attrs.Factory(list)
    _reset: bool = False
    # While set, new connections are accepted and closed at once (a server that is unreachable).
    refuse: bool = False

    def __attrs_post_init__(self) -> None:
        self._flowing.set()

    async def serve(self, *, task_status: trio.TaskStatus[StallProxy] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Stop forwarding server -> client (client -> server keeps flowing)."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def flow(self) -> None:
        self._flowing.set()

    def cut(self, *, reset: bool = False) -> None:
        """Close every current connection on both sides, without a close frame.

        ``reset``: abort with RST (SO_LINGER 0) instead of an orderly FIN.
        """
        self._reset = reset
        for pair in self._pairs:
            pair.scope.cancel()
        self._pairs.clear()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        if self.refuse:
            await downstream.aclose()
            return
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PROXY_RECEIVE_BUFFER)
        await sock.connect(("127.0.0.1", self.target_port))
        upstream = trio.SocketStream(sock)
        pair = _Pair(downstream, upstream, trio.CancelScope())
        self._pairs.append(pair)
        with pair.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_up, downstream, upstream)
                nursery.start_soon(self._pump_down, upstream, downstream)
        if self._reset:
            for stream in (downstream, upstream):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with trio.CancelScope(shield=True):
            await downstream.aclose()
            await upstream.aclose()

    async def _pump_up(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # One side ended: end the pair (the other pump may be stalled forever otherwise).
        self._end_pair(source)

    async def _pump_down(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.receive_some(PROXY_READ_BYTES)
                if not data:
                    break
                await sink.send_all(data)
                self.forwarded_down += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._end_pair(source)

    def _end_pair(self, stream: trio.SocketStream) -> None:
        for pair in self._pairs:
            if stream in (pair.downstream, pair.upstream):
                pair.scope.cancel()


# --- pids, gates, data ------------------------------------------------------------------------


async def wait_pid_exit(pid: int) -> None:
    """Return once ``pid`` has terminated (zombie or gone); works for any process, child or not."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def go_fifo(directory: Path, name: str = "go") -> Path:
    """A FIFO a command blocks on (``cat FIFO >/dev/null``) until ``release`` opens and closes it."""
    path = directory / name
    os.mkfifo(path)
    return path


async def release(fifo: Path) -> None:
    """Open the FIFO for writing (waits for its reader) and close it: the reader sees EOF."""
    fd = await trio.to_thread.run_sync(os.open, fifo, os.O_WRONLY, abandon_on_cancel=True)
    os.close(fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@pytest.fixture(scope="session")
def random_50mib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 50 MiB file of random bytes and its sha256 (made once per test session)."""
    path = tmp_path_factory.mktemp("data") / "random-50mib"
    with path.open("wb") as out:
        subprocess.run(["head", "-c", str(50 * MIB), "/dev/urandom"], stdout=out, check=True)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@attrs.define(eq=False)
class EndedConnections:
    """How many connections of an instrumented server have ended (see ``hook_connection_ended``)."""

    count: int = 0
    _changed: trio.Event = attrs.Factory(trio.Event)

    def _ended(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            await self._changed.wait()


def hook_connection_ended(server: Any) -> EndedConnections:
    """Instrument an in-process ``Server``: count the connections whose teardown has finished."""
    ended = EndedConnections()
    original = server.connection_ended

    def connection_ended(connection: Any) -> None:
        original(connection)
        ended._ended()

    server.connection_ended = connection_ended
    return ended


def hook_detached(session: Any) -> trio.Event:
    """Instrument an in-process ``Session``: the Event is set once it detaches from its connection."""
    detached = trio.Event()
    original = session.detach

    def detach(generation: int) -> None:
        original(generation)
        if session.state.value == "detached":
            detached.set()

    session.detach = detach
    return detached


async def wait_closed(raw: RawClient) -> int:
    """Wait until the raw client's connection closed; returns the close code."""
    with contextlib.suppress(AssertionError):  # wait_until raises once the connection closed
        await raw.wait_until(lambda: False)
    assert raw.closed is not None
    return raw.closed.reason.code


async def read_all(raw: RawClient, process_id: str, after_seq: int = 0) -> tuple[dict[int, bytes], dict[str, Any]]:
    """Page ``process/read`` from ``after_seq`` to the end of the closed record.

    Returns the chunks by seq and the last read result.
    """
    import base64

    chunks: dict[int, bytes] = {}
    after = after_seq
    while True:
        result = await raw.call("process/read", {"processId": process_id, "afterSeq": after, "waitMs": 5000})
        chunks.update((c["seq"], base64.b64decode(c["chunk"])) for c in result["chunks"])
        after = result["nextSeq"] - 1
        if result["closed"] and result["nextSeq"] > result["lastSeq"]:
            return chunks, result


# --- the CLI server as a child ------------------------------------------------------------------


@attrs.define(eq=False)
class SubprocessServer:
    """A ``serve`` CLI child with its URL and token (see ``subprocess_server``)."""

    cli: CliServer
    url: str
    token: str

    @property
    def process(self) -> trio.Process:
        return self.cli.process

    @property
    def pid(self) -> int:
        return self.cli.process.pid

    @property
    def stderr(self) -> bytearray:
        return self.cli.stderr

    async def wait_stderr(self, needle: bytes) -> None:
        await self.cli.wait_stderr(needle)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def peak_rss(self) -> int:
        """VmHWM: the high-water mark of the server's resident set, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def reset_peak_rss(self) -> None:
        """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def children(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.pid).children(recursive=True)]


@contextlib.asynccontextmanager
async def subprocess_server(
    directory: Path, *extra: str, token: str | None = None, listen: str = "ws://127.0.0.1:0"
) -> AsyncIterator[SubprocessServer]:
    """``python -m exec_server serve --listen ws://127.0.0.1:0 --sandbox none ...`` as a child.

    ``token``: reuse a token (a restarted server); ``listen``: e.g. a fixed port.
    Killed and waited for on exit if the test did not stop it.
    """
    token = token or secrets.token_urlsafe(32)
    token_file = directory / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    args = [
        "serve",
        "--listen", listen,
        "--sandbox", "none",
        "--audit-denials", "off",
        "--token-file", str(token_file),
        *extra,
    ]  # fmt: skip
    async with run_cli_server(args, cli_env()) as cli:
        url = (await cli.stdout_line()).decode().strip()
        assert url, "the server exited before printing its URL"
        yield SubprocessServer(cli, url, token)


def terminate_and_time(server: SubprocessServer) -> float:
    """Send SIGTERM; returns the monotonic time it was sent."""
    sent = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    return sent
