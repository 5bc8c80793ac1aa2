"""A deliberately small client that speaks the wire protocol directly.

It serves three purposes: the baseline arms that the pushed design replaced
(``final-read``: wait for ``exited``, then one ``process/read``; ``poll``: legacy long-poll
reads until ``closed``), a ``pushed-raw`` arm that runs the same loop as those baselines but
finishes on pushed events alone (so the comparison isolates the protocol, not two client
implementations), and the binary-framing arm when ``exec_client`` does not negotiate it.

No reader task: each call owns the connection until its processes are complete, which is
exactly the sequential shape of the latency arms and keeps per-message overhead minimal.
Records are assembled by the project's sans-io ``protocol.Assembler``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import attrs
import trio_websocket

import protocol as p

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# trio-websocket reads 4 KiB at a time by default: 64 parser passes per 256 KiB output frame.
RECEIVE_BUFFER_BYTES: Final = 256 * 1024
READ_MAX_BYTES: Final = p.READ_MAX_BYTES
LONG_POLL_MS: Final = 10_000


class RawError(RuntimeError):
    """The server answered with an error."""


@attrs.frozen(kw_only=True)
class Spec:
    """One process to run: its id, argv and optional sandbox policy."""

    process_id: str
    argv: tuple[str, ...]
    sandbox: p.SandboxPolicy | None = None


@attrs.frozen(kw_only=True)
class Outcome:
    """What a baseline arm learned: enough to check completeness and count reads."""

    process_id: str
    exit_code: int | None
    stdout: bytes
    closed: bool
    read_calls: int


class RawConnection:
    """One initialized session over one WebSocket."""

    def __init__(self, websocket: trio_websocket.WebSocketConnection, info: dict[str, Any]) -> None:
        self._ws = websocket
        self.info = info
        self._ids = itertools.count(1)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, token: str, *, delivery: p.Delivery = p.Delivery.BEST_EFFORT, binary_output: bool = False
    ) -> AsyncIterator[RawConnection]:
        headers = [(b"Authorization", f"Bearer {token}".encode())]
        async with trio_websocket.open_websocket_url(
            url, extra_headers=headers, max_message_size=MAX_MESSAGE_BYTES, receive_buffer_size=RECEIVE_BUFFER_BYTES
        ) as websocket:
            params = p.InitializeParams(
                client_name="bench-raw", protocol_version=p.PROTOCOL_VERSION, delivery=delivery, binary_output=binary_output
            )
            await websocket.send_message(p.encode_request(0, params))
            reply = p.decode(await websocket.get_message())
            if not isinstance(reply, p.Response):
                raise RawError(f"initialize failed: {reply}")
            await websocket.send_message(p.encode_notification(p.InitializedParams()))
            yield cls(websocket, reply.result)

    @property
    def binary_output(self) -> bool:
        return bool(self.info.get("capabilities", {}).get("binaryOutput"))

    async def _send(self, params: Any) -> int:
        request_id = next(self._ids)
        await self._ws.send_message(p.encode_request(request_id, params))
        return request_id

    async def _receive(self) -> p.Message:
        frame = await self._ws.get_message()
        if isinstance(frame, bytes):
            return p.Notification("process/output", p.decode_binary_output(frame))
        return p.decode(frame)

    async def _start(self, spec: Spec) -> int:
        return await self._send(p.StartParams(process_id=spec.process_id, argv=spec.argv, sandbox=spec.sandbox))

    async def release(self, process_ids: Sequence[str]) -> None:
        """Release finished processes (their retention), outside any timed window."""
        pending = {await self._send(p.ReleaseParams(process_id=pid)) for pid in process_ids}
        while pending:
            message = await self._receive()
            if isinstance(message, p.Response | p.ErrorResponse):
                pending.discard(message.id)  # type: ignore[arg-type]

    # --- pushed: the assembler finishes on events alone ----------------------------------

    async def run_pushed(self, specs: Sequence[Spec], *, max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES) -> list[p.TerminalRecord]:
        """Start every spec, then assemble each record from pushed events (reads only on a gap)."""
        assemblers = {spec.process_id: p.Assembler(spec.process_id, spec.argv, max_output_bytes=max_output_bytes) for spec in specs}
        starts = {await self._start(spec): spec.process_id for spec in specs}
        reads: dict[int, str] = {}
        records: dict[str, p.TerminalRecord] = {}
        while len(records) < len(specs):
            message = await self._receive()
            if isinstance(message, p.Notification):
                process_id = message.params.process_id
                assembler = assemblers.get(process_id)
                if assembler is None:
                    continue
                progress = assembler.event(message.params)
            elif isinstance(message, p.ErrorResponse):
                raise RawError(f"{starts.get(message.id) or reads.get(message.id)}: {message.code} {message.message}")  # type: ignore[arg-type]
            elif isinstance(message, p.Response) and message.id in reads:
                process_id = reads.pop(message.id)  # type: ignore[arg-type]
                assembler = assemblers[process_id]
                progress = assembler.read_result(p.decode_result("process/read", message.result))
            else:
                continue  # start responses
            action = progress.action
            if isinstance(action, p.Complete):
                records[process_id] = action.record
            elif isinstance(action, p.NeedRead):
                request_id = await self._send(
                    p.ReadParams(process_id=process_id, after_seq=action.after_seq, max_bytes=action.max_bytes, wait_ms=action.wait_ms)
                )
                reads[request_id] = process_id
        return [records[spec.process_id] for spec in specs]

    # --- final-read: the design pushed events replaced ------------------------------------

    async def run_final_read(self, spec: Spec) -> Outcome:
        """Start, wait for ``exited``, then ``process/read`` from seq 0 (long-poll until closed)."""
        await self._start(spec)
        while True:
            message = await self._receive()
            if isinstance(message, p.ErrorResponse):
                raise RawError(f"{spec.process_id}: {message.code} {message.message}")
            if isinstance(message, p.Notification) and isinstance(message.params, p.ExitedEvent):
                if message.params.process_id == spec.process_id:
                    break
        return await self._read_until_closed(spec, wait_ms=LONG_POLL_MS)

    # --- poll: a legacy client that ignores pushed events ---------------------------------

    async def run_poll(self, spec: Spec) -> Outcome:
        """Start, then long-poll ``process/read`` until ``closed``; pushed events are discarded undecoded."""
        await self._start(spec)
        return await self._read_until_closed(spec, wait_ms=LONG_POLL_MS, skip_notifications=True)

    async def _read_until_closed(self, spec: Spec, *, wait_ms: int, skip_notifications: bool = False) -> Outcome:
        after_seq = 0
        reads = 0
        stdout = bytearray()
        while True:
            request_id = await self._send(
                p.ReadParams(process_id=spec.process_id, after_seq=after_seq, max_bytes=READ_MAX_BYTES, wait_ms=wait_ms)
            )
            reads += 1
            result = await self._await_response(request_id, skip_notifications)
            for chunk in result.chunks:
                if chunk.stream is p.Stream.STDOUT:
                    stdout += chunk.chunk
            after_seq = result.next_seq - 1
            if result.closed and result.last_seq is not None and result.next_seq > result.last_seq:
                return Outcome(process_id=spec.process_id, exit_code=result.exit_code, stdout=bytes(stdout), closed=True, read_calls=reads)

    async def _await_response(self, request_id: int, skip_notifications: bool) -> p.ReadResult:
        while True:
            frame = await self._ws.get_message()
            if isinstance(frame, bytes):
                continue
            # A legacy server would not send events at all: do not charge their decoding to this arm.
            if skip_notifications and frame.startswith('{"jsonrpc":"2.0","method"'):
                continue
            message = p.decode(frame)
            if isinstance(message, p.ErrorResponse) and message.id == request_id:
                raise RawError(f"read: {message.code} {message.message}")
            if isinstance(message, p.Response) and message.id == request_id:
                result: p.ReadResult = p.decode_result("process/read", message.result)
                return result
