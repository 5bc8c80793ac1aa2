"""A small raw JSON-RPC client for server tests: plain JSON over trio-websocket, no protocol package.

It sends hand-built messages and records everything the server sends, in arrival order, so
tests can assert on the wire itself: the order of a response against events, seq gaps, the
exact error objects. One background task reads the socket; ``call`` waits for the response
to its id while notifications keep accumulating.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import select
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import psutil
import pytest
import trio
import trio_websocket

# Reads answer at most 4 MiB of payload (base64 + JSON makes that ~5.6 MB on the wire).
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
TERMINAL_METHODS: Final = frozenset({"process/exited", "process/closed"})
_BINARY_HEADER: Final = struct.Struct(">BBQB")
_BINARY_STREAMS: Final = {1: "stdout", 2: "stderr", 3: "pty"}


class RpcError(Exception):
    """An error response; ``code``, ``message`` and ``data`` as the server sent them."""

    def __init__(self, response: dict[str, Any]) -> None:
        error = response["error"]
        super().__init__(f"{error['code']}: {error['message']}")
        self.response = response
        self.code: int = error["code"]
        self.message: str = error["message"]
        self.data: Any = error.get("data")


@attrs.frozen
class Event:
    """One pushed notification of a process (``process/output|exited|closed``)."""

    method: str
    params: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.method.removeprefix("process/")

    @property
    def seq(self) -> int:
        return int(self.params["seq"])

    @property
    def process_id(self) -> str:
        return str(self.params["processId"])

    @property
    def data(self) -> bytes:
        """The decoded chunk of an output event."""
        return base64.b64decode(self.params["chunk"], validate=True)


def output_of(events: list[Event], stream: str = "stdout") -> bytes:
    """The concatenated bytes of ``stream`` in seq order."""
    return b"".join(e.data for e in sorted(events, key=lambda e: e.seq) if e.kind == "output" and e.params["stream"] == stream)


class RawClient:
    """One WebSocket connection to the server (see ``open_raw_client``)."""

    def __init__(self, websocket: trio_websocket.WebSocketConnection) -> None:
        self.websocket = websocket
        self._ids = itertools.count(1)
        self._responses: dict[Any, dict[str, Any]] = {}
        # Everything received, in arrival order: responses, errors, notifications.
        self.log: list[dict[str, Any]] = []
        self.events: list[Event] = []
        self._changed = trio.Event()
        self._resume = trio.Event()
        self._resume.set()
        self.closed: trio_websocket.ConnectionClosed | None = None
        self.initialize_result: dict[str, Any] | None = None

    # --- the reader ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                await self._resume.wait()
                raw = await self.websocket.get_message()
                self._record(_parse(raw))
        except trio_websocket.ConnectionClosed as exc:
            self.closed = exc
            self._wake()

    def _record(self, message: dict[str, Any]) -> None:
        self.log.append(message)
        if "method" in message and "id" not in message:
            if str(message["method"]).startswith("process/"):
                self.events.append(Event(message["method"], message["params"]))
        elif "id" in message and message["id"] is not None:
            self._responses[message["id"]] = message
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some message arrived (or already holds)."""
        while not predicate():
            if self.closed is not None:
                raise AssertionError(f"connection closed while waiting: {self.closed.reason}")
            await self._changed.wait()

    def pause(self) -> None:
        """Stop reading the socket (after the message in hand): lets the server's queue fill."""
        self._resume = trio.Event()

    def resume(self) -> None:
        self._resume.set()

    # --- sending -------------------------------------------------------------------------

    async def send_raw(self, text: str | bytes) -> None:
        await self.websocket.send_message(text)

    async def send_request(self, method: str, params: Any = None, *, request_id: Any = None, jsonrpc: bool = True) -> Any:
        """Send a request without waiting; returns its id."""
        if request_id is None:
            request_id = next(self._ids)
        message: dict[str, Any] = {"id": request_id, "method": method}
        if jsonrpc:
            message["jsonrpc"] = "2.0"
        if params is not None:
            message["params"] = params
        await self.send_raw(json.dumps(message))
        return request_id

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send_raw(json.dumps(message))

    async def response(self, request_id: Any) -> dict[str, Any]:
        """The whole response envelope for ``request_id`` (waits for it)."""
        await self.wait_until(lambda: request_id in self._responses)
        return self._responses.pop(request_id)

    async def request(self, method: str, params: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Send a request and return its response envelope (result or error)."""
        return await self.response(await self.send_request(method, params, **kwargs))

    async def call(self, method: str, params: Any = None) -> Any:
        """Send a request and return its ``result``; raises ``RpcError`` for an error response."""
        response = await self.request(method, {} if params is None else params)
        if "error" in response:
            raise RpcError(response)
        return response["result"]

    async def expect_error(self, method: str, params: Any, code: int) -> RpcError:
        """Call and assert the error code; returns the error for further checks."""
        response = await self.request(method, params)
        assert "error" in response, f"expected error {code}, got {response}"
        error = RpcError(response)
        assert error.code == code, f"expected error {code}, got {response}"
        return error

    # --- session and process helpers ---------------------------------------------------

    async def initialize(self, **extra: Any) -> dict[str, Any]:
        """``initialize`` then the ``initialized`` notification; returns the result."""
        result = await self.call("initialize", {"clientName": "rawclient", "protocolVersion": 1, **extra})
        await self.notify("initialized", {})
        self.initialize_result = result
        return result

    async def start(self, process_id: str, argv: list[str], **params: Any) -> dict[str, Any]:
        return await self.call("process/start", {"processId": process_id, "argv": argv, **params})

    def events_of(self, process_id: str) -> list[Event]:
        """The events of one process received so far, in arrival order."""
        return [e for e in self.events if e.process_id == process_id]

    async def events_for(self, process_id: str) -> list[Event]:
        """Wait for ``process/closed`` of ``process_id``; returns all its events in arrival order."""
        await self.wait_until(lambda: any(e.kind == "closed" for e in self.events_of(process_id)))
        return self.events_of(process_id)

    async def wait_event(self, process_id: str, predicate: Callable[[Event], bool]) -> Event:
        """Wait for the first event of ``process_id`` that satisfies ``predicate``."""
        found: list[Event] = []

        def match() -> bool:
            found[:] = [e for e in self.events_of(process_id) if predicate(e)]
            return bool(found)

        await self.wait_until(match)
        return found[0]

    async def wait_output(self, process_id: str, needle: bytes, stream: str = "stdout") -> bytes:
        """Wait until ``stream`` of the process contains ``needle``; returns the stream so far."""
        collected: list[bytes] = [b""]

        def match() -> bool:
            collected[0] = output_of(self.events_of(process_id), stream)
            return needle in collected[0]

        await self.wait_until(match)
        return collected[0]

    async def run(self, process_id: str, argv: list[str], **params: Any) -> list[Event]:
        """Start a process and return its events once closed."""
        await self.start(process_id, argv, **params)
        return await self.events_for(process_id)


def is_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (gone, a zombie waiting for its reaper, or being reaped:
    the init of a PID namespace reaps its orphans as it dies, through the "dead" state)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


class PidWatch:
    """Watch any process (not only our children) through a pidfd, to wait for its death.

    A pipe reaching EOF does not mean its holder is gone yet: a dying process closes its
    files before it becomes a zombie. Open the watch while the process is known alive
    (no pid-reuse race), then wait: a tree that was really killed dies within the bound.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd = None  # already dead and reaped

    async def wait_exited(self, timeout: float = 5.0) -> None:
        if self._fd is None:
            return
        try:
            with trio.fail_after(timeout):
                await trio.lowlevel.wait_readable(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None

    def wait_exited_sync(self, timeout: float = 5.0) -> None:
        if self._fd is None:
            return
        try:
            readable, _, _ = select.select([self._fd], [], [], timeout)
            assert readable, f"pid {self.pid} still runs after {timeout}s"
        finally:
            os.close(self._fd)
            self._fd = None


def live_descendants() -> set[int]:
    """The pids below this test process that still run (zombies excluded)."""
    return {child.pid for child in psutil.Process().children(recursive=True) if not is_gone(child.pid)}


def reap_leftover_descendants(ignore: set[int] = frozenset(), timeout: float = 5.0) -> list[str]:  # type: ignore[assignment]
    """Kill and reap whatever this test process still has running below it.

    Run after a test's trio loop ended (the servers are gone, so nothing else reaps).
    Returns a description of each descendant that was still alive; those in ``ignore``
    (what ran before the test began, not the test's doing) are left alone.
    """
    me = psutil.Process()
    # A command's PID-namespace init finishes exiting only once every process of its
    # namespace was reaped, and a command whose launcher was killed is our zombie by then.
    _reap_zombie_children(me)
    alive = [child for child in me.children(recursive=True) if child.pid not in ignore and not is_gone(child.pid)]
    if alive:
        # Give SIGKILLs sent by a server's teardown a moment to land before blaming the test.
        _gone, alive = psutil.wait_procs(alive, timeout=timeout)
    leftovers = []
    for child in alive:
        try:
            leftovers.append(f"{child.pid} {child.cmdline()}")
            child.kill()
        except psutil.Error:
            pass
    _reap_zombie_children(me)
    return leftovers


def _reap_zombie_children(me: psutil.Process) -> None:
    for child in me.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def _parse(raw: str | bytes) -> dict[str, Any]:
    if isinstance(raw, str):
        message = json.loads(raw)
        assert isinstance(message, dict), raw
        return message
    # A negotiated binary output frame: turn it into the JSON shape so tests see one form.
    kind, stream, seq, id_length = _BINARY_HEADER.unpack_from(raw)
    assert kind == 1, raw[:16]
    end = _BINARY_HEADER.size + id_length
    return {
        "method": "process/output",
        "params": {
            "processId": raw[_BINARY_HEADER.size : end].decode("ascii"),
            "seq": seq,
            "stream": _BINARY_STREAMS[stream],
            "chunk": base64.b64encode(raw[end:]).decode("ascii"),
        },
    }


@contextlib.asynccontextmanager
async def open_raw_client(
    url: str,
    token: str | None = None,
    *,
    subprotocols: list[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[RawClient]:
    """Connect (with ``Authorization: Bearer <token>`` when a token is given) and read in the background."""
    headers = list(extra_headers or [])
    if token is not None:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    # trio-websocket 0.12 never closes the TCP stream when the server closed the WebSocket
    # first (its reader stops at EOF, and aclose() is then a no-op): close it ourselves
    # afterwards, or the socket's ResourceWarning fails a later test.
    stream: trio.abc.Stream | None = None
    try:
        async with trio_websocket.open_websocket_url(
            url, subprotocols=subprotocols, extra_headers=headers, max_message_size=MAX_MESSAGE_BYTES
        ) as websocket:
            stream = websocket._stream
            client = RawClient(websocket)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._read_loop)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


# --- fixtures the server test modules import ---------------------------------------------


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a process running (checked after its trio loop ended)."""
    before = live_descendants()
    yield
    leftovers = reap_leftover_descendants(ignore=before)
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture
async def client(server: Any, no_leftover_processes: None) -> AsyncIterator[RawClient]:
    """An initialized raw client of the ``server`` fixture."""
    async with open_raw_client(server.url, server.token) as raw:
        await raw.initialize()
        yield raw


# --- the CLI server as a subprocess ------------------------------------------------------

REPO_ROOT: Final = Path(__file__).resolve().parents[1]


@attrs.define
class CliServer:
    """``python -m exec_server serve ...`` running as a child; stderr is collected as it comes."""

    process: trio.Process
    stderr: bytearray = attrs.Factory(bytearray)
    _stdout_buffer: bytearray = attrs.Factory(bytearray)
    _stderr_changed: trio.Event = attrs.Factory(trio.Event)

    async def wait_stderr(self, needle: bytes) -> None:
        """Until ``needle`` has appeared on its stderr."""
        while needle not in self.stderr:
            await self._stderr_changed.wait()

    def _got_stderr(self, data: bytes) -> None:
        self.stderr += data
        self._stderr_changed.set()
        self._stderr_changed = trio.Event()

    async def stdout_line(self) -> bytes:
        """The next line of its stdout, without the newline (b"" at EOF)."""
        assert self.process.stdout is not None
        while b"\n" not in self._stdout_buffer:
            data = await self.process.stdout.receive_some(65536)
            if not data:
                line, self._stdout_buffer[:] = bytes(self._stdout_buffer), b""
                return line
            self._stdout_buffer += data
        line, _, rest = bytes(self._stdout_buffer).partition(b"\n")
        self._stdout_buffer[:] = rest
        return line

    async def send_line(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(text.encode() + b"\n")


def cli_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment for a CLI child (repo on the path), with overrides (None unsets)."""
    env = dict(os.environ)
    env.pop("EXEC_SERVER_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@contextlib.asynccontextmanager
async def run_cli_server(args: list[str], env: dict[str, str], *, stdin: bool = False) -> AsyncIterator[CliServer]:
    """Run ``python -m exec_server <args>``; on exit it is killed (if still running) and waited for."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "exec_server", *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    cli = CliServer(process)

    async def collect_stderr() -> None:
        assert process.stderr is not None
        while data := await process.stderr.receive_some(65536):
            cli._got_stderr(data)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_stderr)
            try:
                yield cli
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()


# --- a lean client: wsproto over a bare TCP stream ------------------------------------------


class LeanClient:
    """The WebSocket client handshake and frames by hand (wsproto over a TCP stream).

    Cheaper than a trio-websocket connection (no background reader task), for the tests
    that open thousands of connections; and able to go silent — stop reading, never pong,
    never send a FIN — which a library client cannot.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        import wsproto

        self.stream = stream
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._ids = itertools.count(1)
        self._text: list[str] = []
        #: The close code the server sent, once it did.
        self.close_code: int | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, host: str, port: int, token: str) -> AsyncIterator[LeanClient]:
        from wsproto.events import AcceptConnection, Request

        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            client = cls(stream)
            headers = [(b"Authorization", f"Bearer {token}".encode())]
            await stream.send_all(client._ws.send(Request(host=f"{host}:{port}", target="/", extra_headers=headers)))
            while True:
                event = await client._next_event()
                if isinstance(event, AcceptConnection):
                    break
                raise AssertionError(f"upgrade refused: {event!r}")
            yield client

    async def _next_event(self) -> Any:
        from wsproto.events import CloseConnection, Ping, TextMessage

        while True:
            for event in self._ws.events():
                if isinstance(event, Ping):
                    await self.stream.send_all(self._ws.send(event.response()))
                    continue
                if isinstance(event, TextMessage) and not event.message_finished:
                    self._text.append(event.data)
                    continue
                if isinstance(event, TextMessage) and self._text:
                    event = TextMessage(data="".join((*self._text, event.data)))
                    self._text.clear()
                if isinstance(event, CloseConnection):
                    self.close_code = event.code
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                self._ws.receive_data(None)
            else:
                self._ws.receive_data(data)

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request; return its response envelope (notifications in between are skipped)."""
        from wsproto.events import CloseConnection, Message, TextMessage

        request_id = next(self._ids)
        text = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        await self.stream.send_all(self._ws.send(Message(data=text)))
        while True:
            event = await self._next_event()
            if isinstance(event, CloseConnection):
                raise AssertionError(f"closed {event.code} while waiting for {method}")
            if isinstance(event, TextMessage):
                message = json.loads(event.data)
                if message.get("id") == request_id:
                    return dict(message)

    async def initialize(self, **extra: Any) -> dict[str, Any]:
        response = await self.call("initialize", {"clientName": "lean", "protocolVersion": 1, **extra})
        assert "result" in response, response
        return dict(response["result"])

    async def close(self, code: int = 1000) -> None:
        """Send a close frame and wait for the server's answer (then the caller closes TCP)."""
        from wsproto.events import CloseConnection

        await self.stream.send_all(self._ws.send(CloseConnection(code=code)))
        while not isinstance(await self._next_event(), CloseConnection):
            pass
