"""The stdio transport: a spawned server (locally, or through ``ssh``) speaking on its stdin/stdout.

One JSON message per line each way (the server's ``--listen stdio``); no token, since
whoever can spawn the server already runs as its user (ssh does the authentication). The
server's stderr (its log, ssh's complaints) goes to ours. Closing means closing its stdin:
the server then shuts its session down and exits; we wait a bounded time, then kill it.
"""

from __future__ import annotations

import subprocess
from typing import Final

import anyio
import anyio.abc

from ._errors import ConnectionFailed
from ._transport import CommandTarget, TransportClosed

_READ_BYTES: Final = 256 * 1024
# How long a server whose stdin we closed may take to exit before it is killed.
EXIT_TIMEOUT: Final = 5.0
CLOSE_ABNORMAL: Final = 1006


class StdioTransport:
    """``ClientTransport`` over a child process's stdin/stdout. Create it with ``spawn``."""

    supports_binary = False
    can_ping = False

    def __init__(self, process: anyio.abc.Process, url: str, max_message_bytes: int) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._url = url
        self._max_line = max_message_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self._send_lock = anyio.Lock()
        self._closed: TransportClosed | None = None

    @classmethod
    async def spawn(cls, target: CommandTarget, *, max_message_bytes: int) -> StdioTransport:
        """Start ``target.argv`` with pipes on its stdin/stdout.

        Raises:
            ConnectionFailed: the command cannot be started.
        """
        try:
            process = await anyio.open_process(
                list(target.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, start_new_session=True
            )
        except OSError as exc:
            raise ConnectionFailed(f"cannot start {target.argv[0]!r}: {exc.strerror or exc}") from None
        return cls(process, target.url, max_message_bytes)

    async def send(self, message: str | bytes) -> None:
        if self._closed is not None:
            raise self._closed
        data = message.encode() if isinstance(message, str) else message
        async with self._send_lock:
            try:
                await self._stdin.send(data + b"\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._set_closed(f"{self._url}: the server's stdin is closed")
                raise self._closed from None  # type: ignore[misc]

    async def receive(self) -> str | bytes:
        while True:
            if self._closed is not None:
                raise self._closed
            newline = self._buffer.find(b"\n", self._scanned)
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                self._scanned = 0
                if line.strip():
                    return line.decode("utf-8", errors="replace")
                continue
            self._scanned = len(self._buffer)
            if len(self._buffer) > self._max_line:
                self._set_closed(f"{self._url}: the server sent a line over {self._max_line} bytes")
                await self.abort()
                continue
            try:
                data = await self._stdout.receive(_READ_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                code = await self._exit_status()
                self._set_closed(f"the server ({self._url}) exited" + (f" with status {code}" if code is not None else ""))
                continue
            self._buffer += data

    async def ping(self, timeout: float) -> bool:
        return True  # a dead child or ssh ends the pipe; nothing to ask

    async def aclose(self, code: int, reason: str) -> None:
        self._set_closed("closed by the client")
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stdin)
            with anyio.move_on_after(EXIT_TIMEOUT):
                await self._process.wait()
            await self._kill()

    def ack_at_once(self) -> None:
        pass  # a pipe has no ACKs to delay

    async def abort(self) -> None:
        self._set_closed("connection dropped by the client")
        with anyio.CancelScope(shield=True):
            await self._kill()

    def _set_closed(self, reason: str) -> None:
        if self._closed is None:
            self._closed = TransportClosed(CLOSE_ABNORMAL, reason)

    async def _exit_status(self) -> int | None:
        with anyio.move_on_after(EXIT_TIMEOUT):
            return await self._process.wait()
        return None

    async def _kill(self) -> None:
        if self._process.returncode is None:
            try:
                self._process.kill()
            except ProcessLookupError:
                pass
        await self._process.wait()
        await anyio.aclose_forcefully(self._stdout)
