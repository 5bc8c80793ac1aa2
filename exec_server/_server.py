"""The server: sessions, the sandbox, retention budget, and the shutdown sequence.

Transports (WebSocket, stdio) hand each accepted connection to ``Server.serve``; all the
state lives here and in the sessions, never in a transport.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import TYPE_CHECKING, Final

import trio

import protocol as p

from . import _tempdir, _tree
from ._config import SERVER_NAME, SERVER_VERSION, ServerConfig
from ._retention import RetentionBudget
from ._process import wait_closed
from ._session import KILL_SETTLE_SECONDS, Session
from ._watchdog import Watchdog
from .sandbox import Sandbox

if TYPE_CHECKING:
    from ._connection import Connection
    from ._transport import MessageTransport

log = logging.getLogger(__name__)

# Orphaned descendants re-parented to us are reaped this often.
ORPHAN_REAP_INTERVAL: Final = 1.0
CLOSE_GOING_AWAY: Final = 1001
# At shutdown, a connection whose writer is stuck this long is not waited for.
STUCK_WRITER_SECONDS: Final = 0.5
# At shutdown, how long connections may take to deliver what is queued for them.
FLUSH_SECONDS: Final = 5.0
# How long closing connections may take to finish their close handshake.
CLOSE_HANDSHAKE_SECONDS: Final = 2.0


class Server:
    """Everything one ``exec-server`` process serves.

    Args:
        config: limits, timeouts and the token.
        sandbox: the sandbox it launches commands with.
    """

    def __init__(self, config: ServerConfig, sandbox: Sandbox) -> None:
        self.config = config
        self.sandbox = sandbox
        # Prefixes every command's tree marker, so the watchdog finds this server's commands.
        self.id = secrets.token_hex(8)
        self.retention_budget = RetentionBudget(config.retain_total_bytes)
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.shutting_down = False
        self.default_cwd = os.getcwd()
        self._nursery: trio.Nursery | None = None
        self.connection_nursery: trio.Nursery | None = None
        self.stopped = trio.Event()
        self.finished = trio.Event()
        self._connections_gone = trio.Event()

    # --- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every session and connection until ``stop`` or cancellation."""
        _tree.become_subreaper()
        watchdog = Watchdog(self.id)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.sandbox.run)
                nursery.start_soon(self._reap_orphans)
                nursery.start_soon(_tempdir.sweep_stale_in_thread)  # what a killed server left
                async with trio.open_nursery() as connections:
                    self.connection_nursery = connections
                    task_status.started(self)
                    await self.stopped.wait()
                    # Connections still open here (a second signal, or stop()) are told why.
                    for connection in list(self.connections):
                        connection.close(CLOSE_GOING_AWAY, "server shutting down")
                    with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS):
                        if self.connections:
                            await self._connections_gone.wait()
                    connections.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            # Sessions' nurseries were cancelled above, which killed and reaped every
            # tree; this catches a process whose session task never ran.
            self.kill_everything()
            await watchdog.stop()
            self.finished.set()

    async def serve(self, transport: MessageTransport) -> None:
        """Serve one connection until it ends."""
        from ._connection import Connection

        await Connection(self, transport).run()

    async def _reap_orphans(self) -> None:
        while True:
            await trio.sleep(ORPHAN_REAP_INTERVAL)
            try:
                _tree.reap_orphans()
            except OSError as exc:  # EMFILE while a peer floods us: the next round reaps them
                log.warning("reaping orphans failed (%s); retrying in %.0fs", exc, ORPHAN_REAP_INTERVAL)

    # --- sessions ----------------------------------------------------------------------

    async def new_session(self) -> Session:
        if len(self.sessions) >= self.config.max_sessions:
            raise p.ProtocolError(p.ErrorCode.LIMIT_EXCEEDED, "limit exceeded: too many sessions")
        session = Session(self)
        assert self._nursery is not None
        self.sessions[session.id] = session
        # Started, not just scheduled: a detach right after attach must find its nursery.
        await self._nursery.start(session.run)
        return session

    def forget_session(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    def initialize_result(self, session: Session, *, resumed: bool, binary_output: bool) -> p.InitializeResult:
        config = self.config
        return p.InitializeResult(
            session_id=session.id,
            server_name=SERVER_NAME,
            server_version=SERVER_VERSION,
            protocol_version=p.PROTOCOL_VERSION,
            capabilities=p.Capabilities(
                push_events=True,
                lossless=True,
                release=True,
                sandbox=self.sandbox.capabilities(),
                binary_output=binary_output,
            ),
            limits=p.Limits(
                max_message_bytes=config.max_message_bytes,
                max_processes_per_session=config.max_processes_per_session,
                retain_bytes=config.retain_bytes,
                retain_total_bytes=config.retain_total_bytes,
                retain_after_close_ms=int(config.retain_after_close * 1000),
                detached_session_ttl_ms=int(config.detached_session_ttl * 1000),
                slow_consumer_timeout_ms=int(config.slow_consumer_timeout * 1000),
            ),
            resumed=resumed,
        )

    # --- shutdown ----------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful drain (protocol: no new processes, running ones get ``grace``).

        Every process's ``exited`` and ``closed`` reach its connected client before the
        connections close with 1001.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        self.shutting_down = True
        processes = [proc for session in self.sessions.values() for proc in session.processes.values()]
        await wait_closed(processes, grace)
        for process in processes:
            if not process.is_closed:
                log.info("shutdown: killing the tree of %s after %.1fs grace", process.process_id, grace)
                process.kill_now()
        for session in self.sessions.values():
            session.stop_holding()
        # A client that stopped reading must not hold up the exit (lossless has no
        # slow-consumer close): its events stay retained, nobody will read them now.
        for connection in list(self.connections):
            if connection.writer_stuck_for() >= STUCK_WRITER_SECONDS:
                connection.give_up(CLOSE_GOING_AWAY, "server shutting down")
        await wait_closed(processes, KILL_SETTLE_SECONDS)
        for connection in list(self.connections):
            connection.finish(CLOSE_GOING_AWAY, "server shutting down")
        with trio.move_on_after(FLUSH_SECONDS):
            if self.connections:
                await self._connections_gone.wait()
        self.stopped.set()

    def connection_ended(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._connections_gone.set()

    def kill_everything(self) -> None:
        """Second signal: kill every tree at once."""
        for session in self.sessions.values():
            for process in session.processes.values():
                process.kill_now()

    def stop(self) -> None:
        self.stopped.set()
