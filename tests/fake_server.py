"""A scripted fake exec server, for client tests only.

``ScriptedProcess`` is a model of one finished process on the server: its complete event
list, what retention evicted, and how a ``process/read`` answers (the semantics of
docs/protocol.md §5.3: ``lastSeq``, ``nextSeq``, ``retainedFromSeq``, ``evictedBytes``).
The assembler unit tests use it directly to answer reads; ``FakeServer`` plays it over a
real loopback WebSocket in the order a test scripts — reordered, duplicated, legacy (no
``pushEvents``, no ``sandboxDenied``), or dropping the connection before ``closed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio
import trio_websocket

import protocol as p

FAKE_TOKEN: Final = "fake-token-0123456789abcdef0123456789"
_EXIT_INFO: Final = {"duration_ms": 5.0, "usage": p.Usage(user_cpu_ms=1.0, system_cpu_ms=2.0, max_rss_kb=3000)}


def make_events(process_id: str, spec: Sequence[tuple[Any, ...]], *, legacy: bool = False) -> tuple[p.ProcessEvent, ...]:
    """Build a seq-numbered event list from ``("stdout", b"..")``, ``("exit", code[, denied])``, ``("close",)``."""
    events: list[p.ProcessEvent] = []
    for seq, item in enumerate(spec, start=1):
        kind = item[0]
        if kind in ("stdout", "stderr"):
            events.append(p.OutputEvent(process_id=process_id, seq=seq, stream=p.Stream(kind), chunk=item[1]))
        elif kind == "exit":
            code = item[1]
            signal = None if code < 128 else "SIGKILL"
            if legacy:
                events.append(p.ExitedEvent(process_id=process_id, seq=seq, exit_code=code, signal=signal, timed_out=False))
            else:
                denied = item[2] if len(item) > 2 else False
                denials = (p.Denial(blocker="fs.make_reg", target="/etc/x"),) if denied else ()
                events.append(
                    p.ExitedEvent(
                        process_id=process_id,
                        seq=seq,
                        exit_code=code,
                        signal=signal,
                        timed_out=False,
                        sandbox_denied=denied,
                        denials=denials,
                        sandbox_denied_source="audit",
                        **_EXIT_INFO,
                    )
                )
        elif kind == "close":
            events.append(p.ClosedEvent(process_id=process_id, seq=seq))
        else:
            raise ValueError(kind)
    return tuple(events)


@attrs.define
class ScriptedProcess:
    """One process as the server knows it: every event it produced, and retention.

    ``evicted_through``: output seqs up to it are evicted. ``legacy``: reads omit this
    server's extensions (``lastSeq``, ``evictedBytes``, exit details, ``sandboxDenied``).
    ``produced``: how many events exist so far (a legacy poll reveals them gradually).
    """

    events: tuple[p.ProcessEvent, ...]
    evicted_through: int = 0
    legacy: bool = False
    produced: int | None = None

    @property
    def process_id(self) -> str:
        return self.events[0].process_id

    def outputs(self) -> list[p.OutputEvent]:
        return [event for event in self.events if isinstance(event, p.OutputEvent)]

    def stream_bytes(self, stream: p.Stream) -> bytes:
        return b"".join(event.chunk for event in self.outputs() if event.stream is stream)

    def read(self, after_seq: int, max_bytes: int | None = None) -> p.ReadResult:
        visible = self.events if self.produced is None else self.events[: self.produced]
        outputs = [e for e in visible if isinstance(e, p.OutputEvent)]
        retained = [e for e in outputs if e.seq > self.evicted_through]
        limit = max_bytes if max_bytes is not None else math.inf
        chunks: list[p.OutputChunk] = []
        size = 0
        truncated = False
        for event in retained:
            if event.seq <= after_seq:
                continue
            if chunks and size + len(event.chunk) > limit:
                truncated = True
                break
            chunks.append(p.OutputChunk(seq=event.seq, stream=event.stream, chunk=event.chunk))
            size += len(event.chunk)
        last_seq = visible[-1].seq if visible else 0
        if truncated:
            next_seq = chunks[-1].seq + 1
        elif self.legacy:
            next_seq = chunks[-1].seq + 1 if chunks else after_seq + 1
        else:
            next_seq = last_seq + 1
        exited = next((e for e in visible if isinstance(e, p.ExitedEvent)), None)
        closed = any(isinstance(e, p.ClosedEvent) for e in visible)
        evicted = [e for e in outputs if e.seq <= self.evicted_through]
        retained_from_seq = retained[0].seq if retained else self.evicted_through + 1
        extensions: dict[str, Any] = {}
        if not self.legacy:
            extensions = {
                "last_seq": last_seq,
                "evicted_bytes": p.StreamBytes(
                    stdout=sum(len(e.chunk) for e in evicted if e.stream is p.Stream.STDOUT),
                    stderr=sum(len(e.chunk) for e in evicted if e.stream is p.Stream.STDERR),
                ),
            }
            if exited is not None:
                extensions |= {
                    "duration_ms": exited.duration_ms,
                    "usage": exited.usage,
                    "denials": exited.denials,
                    "sandbox_denied_source": exited.sandbox_denied_source,
                }
        return p.ReadResult(
            chunks=tuple(chunks),
            next_seq=next_seq,
            retained_from_seq=retained_from_seq,
            exited=exited is not None,
            exit_code=exited.exit_code if exited else None,
            signal=exited.signal if exited else None,
            timed_out=exited.timed_out if exited else False,
            sandbox_denied=exited.sandbox_denied if exited else None,
            closed=closed,
            **extensions,
        )


# --- the WebSocket fake -------------------------------------------------------------------

# What a scripted process does after its start response: frames to push. An int pushes the
# event with that seq; "drop" closes the connection abruptly (no close frame); ("await_read",)
# waits until the client has sent a process/read; ("garble", seq) pushes that event with an
# unknown field, which the client cannot decode.
Step = int | str | tuple[str, ...]


@attrs.define
class FakeProcessScript:
    """``push``: the steps after the start response. ``strip_sandbox_denied``: pushed
    ``exited`` events lack ``sandboxDenied`` (an older server) while reads still know it.
    ``start_error``: answer the start with this JSON-RPC error object instead."""

    process: ScriptedProcess
    push: Sequence[Step] = ()
    strip_sandbox_denied: bool = False
    start_error: dict[str, Any] | None = None


@attrs.define
class FakeServer:
    """A scripted exec server on a loopback port.

    Args:
        scripts: one per ``process/start``, consumed in order (the client picks the
            processId; the fake rewrites the scripted events to it).
        push_events: advertise ``pushEvents`` (``False``: a legacy server, which also omits
            the capability key entirely).
        allow_resume: answer ``initialize{resumeSessionId}`` with ``resumed: true``.
        legacy_reveal: on a legacy server each read reveals this many more events.
    """

    scripts: list[FakeProcessScript]
    push_events: bool = True
    allow_resume: bool = True
    legacy_reveal: int = 2
    detached_session_ttl_ms: int = 5_000
    max_connections: int | None = None  # later upgrades are refused with HTTP 503
    refuse_reconnects: int = 0  # refuse this many upgrades after the first connection (503)
    token: str = FAKE_TOKEN
    url: str = ""
    requests: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    connections: int = 0
    _processes: dict[str, ScriptedProcess] = attrs.Factory(dict)
    _pending_push: dict[str, list[Step]] = attrs.Factory(dict)
    _script_of: dict[str, FakeProcessScript] = attrs.Factory(dict)
    _read_seen: trio.Event = attrs.Factory(trio.Event)
    _session_id: str = "fake-session"

    def reads(self) -> list[dict[str, Any]]:
        return [params for method, params in self.requests if method == "process/read"]

    async def serve(self, *, task_status: trio.TaskStatus[FakeServer] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0, None
            )
            self.url = f"ws://127.0.0.1:{server.port}"
            task_status.started(self)

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        headers = {name.lower(): value for name, value in request.headers}
        if headers.get(b"authorization") != f"Bearer {self.token}".encode():
            await request.reject(401, body=b"unauthorized")
            return
        if self.max_connections is not None and self.connections >= self.max_connections:
            await request.reject(503, body=b"unavailable")
            return
        if self.connections and self.refuse_reconnects:
            self.refuse_reconnects -= 1
            await request.reject(503, body=b"unavailable")
            return
        ws = await request.accept()
        self.connections += 1
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    text = await ws.get_message()
                    await self._on_message(ws, json.loads(text), nursery)
            except trio_websocket.ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    async def _send(self, ws: trio_websocket.WebSocketConnection, payload: dict[str, Any]) -> None:
        await ws.send_message(json.dumps(payload))

    async def _on_message(self, ws: trio_websocket.WebSocketConnection, message: dict[str, Any], nursery: trio.Nursery) -> None:
        method = message.get("method")
        params = message.get("params") or {}
        if "id" not in message:
            return  # initialized
        self.requests.append((method, params))
        request_id = message["id"]
        if method == "initialize":
            resumed = params.get("resumeSessionId") == self._session_id and self.allow_resume
            capabilities: dict[str, Any] = {"lossless": False, "release": True, "sandbox": {"available": False}}
            if self.push_events:
                capabilities["pushEvents"] = True
            result = {
                "sessionId": self._session_id if resumed or not params.get("resumeSessionId") else "fake-session-new",
                "serverName": "fake",
                "serverVersion": "0",
                "protocolVersion": 1,
                "capabilities": capabilities,
                "limits": {"detachedSessionTtlMs": self.detached_session_ttl_ms, "maxMessageBytes": 16 << 20},
                "resumed": resumed,
            }
            await self._send(ws, {"id": request_id, "result": result})
        elif method == "process/start":
            script = self.scripts.pop(0)
            if script.start_error is not None:
                await self._send(ws, {"id": request_id, "error": script.start_error})
                return
            process_id = params["processId"]
            events = tuple(attrs.evolve(event, process_id=process_id) for event in script.process.events)
            process = attrs.evolve(script.process, events=events)
            if not self.push_events:
                process.produced = 0  # a legacy poll sees the process make progress
            self._processes[process_id] = process
            self._script_of[process_id] = script
            self._pending_push[process_id] = list(script.push)
            await self._send(ws, {"id": request_id, "result": {"processId": process_id, "pid": 4242, "sandboxType": "none"}})
            nursery.start_soon(self._push, ws, process_id)
        elif method == "process/read":
            process = self._processes[params["processId"]]
            if process.produced is not None:
                process.produced = min(len(process.events), process.produced + self.legacy_reveal)
            result = process.read(params.get("afterSeq", 0), params.get("maxBytes"))
            raw = p.unstructure(result)
            if process.legacy:
                for key in ("lastSeq", "evictedBytes", "durationMs", "usage", "denials", "sandboxDeniedSource", "failure"):
                    raw.pop(key, None)
            await self._send(ws, {"id": request_id, "result": raw})
            self._read_seen.set()
            self._read_seen = trio.Event()
        elif method == "process/release":
            await self._send(ws, {"id": request_id, "result": {}})
        elif method == "process/terminate":
            await self._send(ws, {"id": request_id, "result": {"running": False}})
        elif method == "process/signal":
            await self._send(ws, {"id": request_id, "result": {"delivered": True}})
        elif method == "process/write":
            await self._send(ws, {"id": request_id, "result": {"status": "accepted"}})
        else:
            await self._send(ws, {"id": request_id, "error": {"code": -32601, "message": f"method not found: {method}"}})
        # A resumed session continues the scripted pushes where the dropped connection stopped.
        if method == "initialize" and params.get("resumeSessionId"):
            nursery.start_soon(self._push_all, ws)

    async def _push_all(self, ws: trio_websocket.WebSocketConnection) -> None:
        for process_id in list(self._pending_push):
            await self._push(ws, process_id)

    async def _push(self, ws: trio_websocket.WebSocketConnection, process_id: str) -> None:
        steps = self._pending_push[process_id]
        process = self._processes[process_id]
        while steps:
            step = steps.pop(0)
            if step == "drop":
                # Abrupt: close the TCP stream without a close frame.
                await ws._stream.aclose()  # noqa: SLF001  (a fake may be rude on purpose)
                return
            if isinstance(step, tuple) and step[0] == "await_read":
                await self._read_seen.wait()
                continue
            garble = isinstance(step, tuple) and step[0] == "garble"
            seq = int(step[1]) if isinstance(step, tuple) else step
            assert isinstance(seq, int)
            event = process.events[seq - 1]
            raw = p.unstructure(event)
            if garble:
                raw["seq"] = "not a number"  # a field of the wrong type: any codec refuses it
            if isinstance(event, p.ExitedEvent) and (process.legacy or self._script_of[process_id].strip_sandbox_denied):
                for key in ("sandboxDenied", "durationMs", "usage", "denials", "sandboxDeniedSource"):
                    raw.pop(key, None)
            method = {p.OutputEvent: "process/output", p.ExitedEvent: "process/exited", p.ClosedEvent: "process/closed"}[type(event)]
            await self._send(ws, {"method": method, "params": raw})
