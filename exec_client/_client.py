"""``Client`` and ``open_client``: a session with an exec server, and auto-resume.

The client owns a nursery holding the connection's reader, one driver task per
in-flight process, and (after a connection loss) the resume task. When the connection
drops, the client reconnects with backoff within the session's detached TTL, sends
``initialize{resumeSessionId}``, and tells every in-flight assembler to catch up with a
read from its last contiguous seq. If it cannot, every in-flight record ends with
``failure`` set.
"""

from __future__ import annotations

import enum
import math
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

import protocol as p

from ._connection import CloseInfo, Connection
from ._errors import (
    ConnectionFailed,
    ConnectionLost,
    DuplicateProcess,
    ExecClientError,
    InitializeRefused,
    ProtocolViolation,
    ServerError,
)
from ._handle import ProcessHandle

DEFAULT_URL: Final = "ws://127.0.0.1:8765"
CLIENT_VERSION: Final = "0.1.0"
# A hole in a process's seqs waits this long for a late (reordered) event before a read.
GAP_GRACE_SECONDS: Final = 0.05
CONNECT_TIMEOUT_SECONDS: Final = 10.0
# Resume backoff: quick first retries (a blip), capped so we still try often within the TTL.
RESUME_FIRST_DELAY: Final = 0.05
RESUME_MAX_DELAY: Final = 1.0
# Stop trying a little before the server forgets the session, so the last attempt can land.
RESUME_TTL_FRACTION: Final = 0.9
# Close codes after which resuming is pointless: taken over by another connection, or the
# server is going away (its sessions do not survive it).
RESUME_ATTEMPT_SECONDS: Final = 1.5
_NO_RESUME_CODES: Final = {4001: "session taken over by another connection", 1001: "server shutting down"}
_TERMINATE_ON_CANCEL_SECONDS: Final = 5.0
_RELEASE_TIMEOUT_SECONDS: Final = 10.0
_RELEASE_DRAIN_SECONDS: Final = 1.0


class ClientState(enum.Enum):
    """Where the client's session stands (derived from one place: ``Client.state``)."""

    CONNECTED = "connected"
    RESUMING = "resuming"  # the connection dropped; reconnecting within the session TTL
    LOST = "lost"  # the session could not be resumed; in-flight records have ``failure``
    CLOSED = "closed"  # closed by us


@attrs.frozen(kw_only=True)
class ServerInfo:
    """What ``initialize`` said, decoded leniently so that older servers still work."""

    session_id: str
    server_name: str
    server_version: str
    protocol_version: int
    push_events: bool
    lossless: bool
    release: bool
    binary_output: bool
    sandbox: dict[str, Any]
    limits: dict[str, Any]
    resumed: bool

    @property
    def detached_session_ttl_ms(self) -> int | None:
        value = self.limits.get("detachedSessionTtlMs")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @classmethod
    def from_result(cls, raw: Any) -> ServerInfo:
        """Decode an ``initialize`` result; only ``sessionId`` is required.

        Raises:
            ProtocolViolation: the result is not an object or has no string ``sessionId``.
        """
        if not isinstance(raw, dict) or not isinstance(raw.get("sessionId"), str):
            raise ProtocolViolation("malformed initialize result: no sessionId")
        capabilities = raw.get("capabilities")
        capabilities = capabilities if isinstance(capabilities, dict) else {}
        limits = raw.get("limits")
        sandbox = capabilities.get("sandbox")
        version = raw.get("protocolVersion")
        return cls(
            session_id=raw["sessionId"],
            server_name=str(raw.get("serverName", "")),
            server_version=str(raw.get("serverVersion", "")),
            protocol_version=version if isinstance(version, int) else p.PROTOCOL_VERSION,
            push_events=capabilities.get("pushEvents") is True,
            lossless=capabilities.get("lossless") is True,
            release=capabilities.get("release") is True,
            binary_output=capabilities.get("binaryOutput") is True,
            sandbox=sandbox if isinstance(sandbox, dict) else {},
            limits=limits if isinstance(limits, dict) else {},
            resumed=raw.get("resumed") is True,
        )


def new_process_id() -> str:
    """A fresh processId: unique, and within the protocol's ``[A-Za-z0-9._:-]{1,128}``."""
    return f"exec-{uuid.uuid4().hex}"


def _sandbox_policy(sandbox: p.SandboxPolicy | Mapping[str, Any] | str | None) -> p.SandboxPolicy | None:
    if sandbox is None or isinstance(sandbox, p.SandboxPolicy):
        return sandbox
    if isinstance(sandbox, str):
        return p.SandboxPolicy(mode=p.SandboxMode(sandbox))
    try:
        return p.structure(dict(sandbox), p.SandboxPolicy)  # type: ignore[no-any-return]
    except p.ProtocolError as exc:
        raise ValueError(f"invalid sandbox policy: {exc.message}") from None


class Client:
    """A session with an exec server. Create it with ``open_client``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        url: str,
        token: str,
        *,
        delivery: p.Delivery,
        client_name: str,
        connect_timeout: float,
        gap_grace: float,
        auto_resume: bool,
        binary_output: bool,
    ) -> None:
        self.url = url
        self._nursery = nursery
        self._token = token
        self._delivery = delivery
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._gap_grace = gap_grace
        self._auto_resume = auto_resume
        self._binary_output = binary_output
        self._connection: Connection | None = None
        self._info: ServerInfo | None = None
        self._handles: dict[str, ProcessHandle] = {}
        self._failed: str | None = None  # set once: the session is gone for good
        self._closing = False
        self._state_changed = trio.Event()
        self.resumes = 0  # how many times the session was resumed (for diagnostics)
        self._releasing = 0
        self._releases_done = trio.Event()

    # --- public API ----------------------------------------------------------------------

    @property
    def info(self) -> ServerInfo:
        """The server's ``initialize`` answer (the latest one after a resume)."""
        assert self._info is not None
        return self._info

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def state(self) -> ClientState:
        if self._closing:
            return ClientState.CLOSED
        if self._failed is not None:
            return ClientState.LOST
        if self._connection is not None and not self._connection.is_closed:
            return ClientState.CONNECTED
        return ClientState.RESUMING

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        stdin: bytes | None = None,
        timeout: float | None = None,
        sandbox: p.SandboxPolicy | Mapping[str, Any] | str | None = None,
        max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES,
    ) -> p.TerminalRecord:
        """Run a command to completion and return its terminal record.

        Args:
            argv: the command, executed directly (no shell).
            cwd: absolute working directory on the server host.
            env: environment variables (added to the server's unless ``inherit_env=False``).
            stdin: bytes written to the command's stdin, then EOF (``None``: no stdin).
            timeout: seconds after which the server kills the whole tree (``timedOut``).
            sandbox: a ``SandboxPolicy``, its wire dict, a mode name, or ``None`` (server default).
            max_output_bytes: per-stream cap of kept output; beyond it head + tail are kept.

        Returns:
            The ``TerminalRecord``; a record with ``failure`` set if the session was lost.

        Raises:
            ServerError: the server refused the start (``SpawnFailed``, ``SandboxUnavailable``...).
            ConnectionLost: the session was already lost.

        If cancelled before the record is complete, the process tree is terminated.
        """
        handle = await self.start(
            argv,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            stdin=stdin,
            timeout=timeout,
            sandbox=sandbox,
            max_output_bytes=max_output_bytes,
            stream_output=False,
        )
        try:
            return await handle.wait()
        except BaseException:
            if handle.record is None:
                with trio.CancelScope(shield=True), trio.move_on_after(_TERMINATE_ON_CANCEL_SECONDS):
                    try:
                        await handle.terminate()
                    except ExecClientError:
                        pass
            raise

    async def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        stdin: bytes | None = None,
        pipe_stdin: bool = False,
        timeout: float | None = None,
        sandbox: p.SandboxPolicy | Mapping[str, Any] | str | None = None,
        max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES,
        stream_output: bool = True,
        process_id: str | None = None,
    ) -> ProcessHandle:
        """Start a command and return its ``ProcessHandle`` at once.

        Args as for ``run``, plus:
            pipe_stdin: keep stdin open for ``handle.write``/``handle.close_stdin``.
            stream_output: buffer chunks for ``async for chunk in handle``.
            process_id: choose the processId (default: a fresh unique one).

        Raises:
            ServerError: the server refused the start.
            ConnectionLost: the session is lost.
            ValueError: invalid arguments (e.g. a relative cwd).
        """
        process_id = process_id or new_process_id()
        params = p.StartParams(
            process_id=process_id,
            argv=tuple(argv),
            cwd=os.fspath(cwd) if cwd is not None else None,
            env=dict(env) if env is not None else None,
            inherit_env=inherit_env,
            pipe_stdin=pipe_stdin or stdin is not None,
            timeout_ms=math.ceil(timeout * 1000) if timeout is not None else None,
            sandbox=_sandbox_policy(sandbox),
        )
        assembler = p.Assembler(
            process_id, params.argv, push_events=self.info.push_events, max_output_bytes=max_output_bytes
        )
        handle = ProcessHandle(self, assembler, stream_output=stream_output)
        # Registered before the request: the first events follow the start response at once.
        self._handles[process_id] = handle
        try:
            result = await self._start(params)
        except BaseException:
            self._handles.pop(process_id, None)
            raise
        handle.pid = result.pid
        handle.sandbox_type = result.sandbox_type
        self._nursery.start_soon(handle._drive)
        if stdin is not None:
            if stdin:
                await handle.write(stdin)
            if not pipe_stdin:
                await handle.close_stdin()
        return handle

    async def list_processes(self) -> tuple[p.ProcessInfo, ...]:
        """The session's processes (``process/list``)."""
        result: p.ListResult = await self._call(p.EmptyParams(), "process/list", retry=True)
        return result.processes

    async def aclose(self) -> None:
        """Close the connection; in-flight records end with ``failure`` set. Idempotent."""
        if self._closing:
            return
        # Let releases already on the wire land, so the server frees those records now.
        with trio.move_on_after(_RELEASE_DRAIN_SECONDS):
            while self._releasing:
                await self._releases_done.wait()
        self._closing = True
        for handle in list(self._handles.values()):
            handle._lost("client closed")
        if self._connection is not None:
            await self._connection.aclose()
        self._set_state()
        self._nursery.cancel_scope.cancel()

    # --- requests ----------------------------------------------------------------------

    async def _start(self, params: p.StartParams) -> p.StartResult:
        resent = False
        while True:
            connection = await self._usable_connection(wait=True)
            try:
                result: p.StartResult = await connection.request(params)
                return result
            except ConnectionLost:
                # The start may or may not have reached the server: send it again on the
                # resumed session; "duplicate" then means it did.
                resent = True
            except DuplicateProcess:
                if not resent:
                    raise
                for info in await self.list_processes():
                    if info.process_id == params.process_id:
                        return p.StartResult(process_id=info.process_id, pid=info.pid, sandbox_type="unknown")
                raise

    async def _call(
        self, params: Any, method: str | None = None, *, retry: bool = False, wait_for_resume: bool = True
    ) -> Any:
        """One request on the current connection.

        ``retry``: resend after a resume if the connection dropped (idempotent calls only).
        ``wait_for_resume``: while resuming, wait for it (else raise ``ConnectionLost``).
        """
        while True:
            connection = await self._usable_connection(wait=wait_for_resume)
            try:
                return await connection.request(params, method)
            except ConnectionLost:
                if not retry:
                    raise

    async def _release(self, process_id: str) -> None:
        """Release a completed record; the caller counted it in ``_releasing`` already."""
        try:
            if not self.info.release:
                return
            with trio.move_on_after(_RELEASE_TIMEOUT_SECONDS):
                await self._call(p.ReleaseParams(process_id=process_id), retry=True)
        except ExecClientError:
            pass  # best effort: the server expires the record anyway
        finally:
            self._releasing -= 1
            if not self._releasing:
                self._releases_done.set()
                self._releases_done = trio.Event()

    async def _usable_connection(self, *, wait: bool) -> Connection:
        while True:
            if self._failed is not None:
                raise ConnectionLost(self._failed)
            if self._closing:
                raise ConnectionLost("client closed")
            connection = self._connection
            if connection is not None and not connection.is_closed:
                return connection
            if not wait:
                raise ConnectionLost("connection lost; resuming the session")
            await self._state_changed.wait()

    def _set_state(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    # --- connection lifecycle ---------------------------------------------------------------

    async def _connect(self, resume_session_id: str | None = None) -> tuple[Connection, ServerInfo]:
        connection = await Connection.open(
            self._nursery,
            self.url,
            self._token,
            on_notification=self._on_notification,
            on_closed=self._on_closed,
            on_unreadable=self._on_unreadable,
            timeout=self._connect_timeout,
        )
        try:
            with trio.fail_after(self._connect_timeout):
                raw = await connection.request(
                    p.InitializeParams(
                        client_name=self._client_name,
                        client_version=CLIENT_VERSION,
                        protocol_version=p.PROTOCOL_VERSION,
                        resume_session_id=resume_session_id,
                        delivery=self._delivery,
                        binary_output=self._binary_output,
                    ),
                    raw=True,
                )
                info = ServerInfo.from_result(raw)
                await connection.notify(p.InitializedParams())
        except ServerError as exc:
            await connection.aclose()
            # Reachable and answering: its refusal is final (e.g. an unknown session).
            raise InitializeRefused(f"initialize failed at {self.url}: {exc}") from None
        except (ProtocolViolation, ConnectionLost, trio.TooSlowError) as exc:
            await connection.aclose()
            detail = "no answer" if isinstance(exc, trio.TooSlowError) else str(exc)
            raise ConnectionFailed(f"initialize failed at {self.url}: {detail}") from None
        except BaseException:
            await connection.aclose()
            raise
        return connection, info

    async def _open(self) -> None:
        self._connection, self._info = await self._connect()

    def _on_notification(self, notification: p.Notification) -> None:
        event = notification.params
        if isinstance(event, p.OutputEvent | p.ExitedEvent | p.ClosedEvent):
            handle = self._handles.get(event.process_id)
            if handle is not None:
                handle._on_event(event)

    def _on_unreadable(self, process_id: str) -> None:
        handle = self._handles.get(process_id)
        if handle is not None:
            handle._on_unreadable()

    def _on_closed(self, connection: Connection, info: CloseInfo) -> None:
        if connection is not self._connection or info.by_us or self._closing:
            return
        self._set_state()
        ttl_ms = self._info.detached_session_ttl_ms if self._info is not None else None
        no_resume = _NO_RESUME_CODES.get(info.code) if info.code is not None else None
        if no_resume is not None:
            self._give_up(f"connection closed: {no_resume}")
        elif not self._auto_resume or not ttl_ms:
            self._give_up(f"connection lost ({info.reason}); session resume is off")
        else:
            self._nursery.start_soon(self._resume, info, ttl_ms / 1000)

    async def _resume(self, lost: CloseInfo, ttl: float) -> None:
        deadline = trio.current_time() + ttl * RESUME_TTL_FRACTION
        delay = RESUME_FIRST_DELAY
        last_error = lost.reason
        session_id = self.info.session_id
        while not self._closing:
            try:
                # Each attempt is short: trio-websocket can wait out its whole timeout on a
                # server that closes the TCP connection before the handshake.
                attempt = min(RESUME_ATTEMPT_SECONDS, max(0.0, deadline - trio.current_time()))
                with trio.fail_after(attempt):
                    connection, info = await self._connect(resume_session_id=session_id)
            except InitializeRefused as exc:
                self._give_up(f"connection lost ({lost.reason}); the server refused the resume: {exc}")
                return
            except (ConnectionFailed, trio.TooSlowError) as exc:
                if isinstance(exc, ConnectionFailed):
                    last_error = str(exc)
            else:
                if not info.resumed:
                    await connection.aclose()
                    self._give_up(f"connection lost ({lost.reason}); the server no longer has the session")
                    return
                if not connection.is_closed:
                    self._connection, self._info = connection, info
                    self.resumes += 1
                    self._set_state()
                    for handle in list(self._handles.values()):
                        handle._resumed()
                    return
                # It dropped again before we adopted it: back off and try again.
                last_error = connection.close_info.reason if connection.close_info else "connection closed"
            if trio.current_time() + delay >= deadline:
                break
            await trio.sleep(delay)
            delay = min(delay * 2, RESUME_MAX_DELAY)
        self._give_up(f"connection lost ({lost.reason}); could not resume within {ttl:g} s: {last_error}")

    def _give_up(self, reason: str) -> None:
        if self._failed is None:
            self._failed = reason
        for handle in list(self._handles.values()):
            handle._lost(reason)
        self._set_state()

    def _forget(self, handle: ProcessHandle) -> None:
        if self._handles.get(handle.process_id) is handle:
            del self._handles[handle.process_id]


@asynccontextmanager
async def open_client(
    url: str = DEFAULT_URL,
    *,
    token: str,
    delivery: p.Delivery | str = p.Delivery.LOSSLESS,
    client_name: str = "exec-client",
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    gap_grace: float = GAP_GRACE_SECONDS,
    auto_resume: bool = True,
    binary_output: bool = True,
) -> AsyncIterator[Client]:
    """Connect to an exec server and open a session.

    Args:
        url: ``ws://host:port`` of the server.
        token: the bearer token.
        delivery: ``"lossless"`` (default: a command that outpaces this client is slowed
            down rather than having its output evicted) or ``"bestEffort"`` (output
            events may be dropped and are repaired from retention; see protocol doc §8).
        client_name: reported at ``initialize``.
        connect_timeout: seconds for the TCP connect, the handshake and ``initialize``.
        gap_grace: seconds a hole in a process's seqs may wait for a reordered event.
        auto_resume: reconnect and resume the session after a connection loss.
        binary_output: ask for output events as binary frames (no base64; several times
            faster for bulk output). A server that does not offer it keeps sending text
            frames, which the client reads just the same.

    Raises:
        ConnectionFailed: unreachable, refused, or a bad token.
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client = Client(
            nursery,
            url,
            token,
            delivery=p.Delivery(delivery),
            client_name=client_name,
            connect_timeout=connect_timeout,
            gap_grace=gap_grace,
            auto_resume=auto_resume,
            binary_output=binary_output,
        )
        try:
            await client._open()
        except BaseException as exc:
            body_error = exc
        else:
            try:
                yield client
            except BaseException as exc:
                # Re-raised below, outside the nursery, so callers see the exception
                # itself rather than an ExceptionGroup (our tasks never raise).
                body_error = exc
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
    if body_error is not None:
        raise body_error
