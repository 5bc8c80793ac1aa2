"""The server: sessions, the sandbox, retention budget, and the shutdown sequence.

Transports (WebSocket, stdio) hand each accepted connection to ``Server.serve``; all the
state lives here and in the sessions, never in a transport.

State table (``Server.state``; every move goes through ``Server._move``):

==========  ================================================  ====================================
state       meaning                                           leaves on
==========  ================================================  ====================================
STARTING    constructed; ``run`` has not bound yet            ``run`` started -> SERVING
SERVING     accepting sessions and processes                  ``shutdown`` -> DRAINING; ``stop``
                                                              -> CLOSING
DRAINING    no new sessions or processes; running ones get    every event delivered and the
            the grace, then every event of every process      connections closed 1001 (bounded),
            reaches its connected client                      or ``stop`` -> CLOSING
CLOSING     the connections still open are closed 1001        the close handshakes end (bounded)
            (bounded), then everything is cancelled           -> STOPPED
STOPPED     every tree killed, ``run`` returned               (terminal)
==========  ================================================  ====================================

``run`` cancelled from outside moves any state straight to STOPPED.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import types
from collections.abc import Mapping
from typing import Final

import trio

import protocol as p
from protocol import CloseCode

from . import _tempdir, _tree
from ._config import SERVER_NAME, SERVER_VERSION, ServerConfig
from ._connection import Connection
from ._lifecycle import Lifecycle
from ._process import wait_closed
from ._retention import RetentionBudget
from ._session import KILL_SETTLE_SECONDS, Session, SessionState
from ._transport import MessageTransport
from ._watchdog import Watchdog
from .sandbox import Sandbox

log = logging.getLogger(__name__)

# Orphaned descendants re-parented to us are reaped this often.
# At exit, how long killed trees may take to leave their cgroups.
LEFTOVER_SETTLE_SECONDS: Final = 1.0
ORPHAN_REAP_INTERVAL: Final = 1.0
# At shutdown, a connection whose writer is stuck this long is not waited for.
STUCK_WRITER_SECONDS: Final = 0.5
# At shutdown, how long connections may take to deliver what is queued for them.
FLUSH_SECONDS: Final = 5.0
# How long closing connections may take to finish their close handshake.
CLOSE_HANDSHAKE_SECONDS: Final = 2.0
SHUTTING_DOWN_REASON: Final = "server shutting down"


class ServerState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    CLOSING = "closing"
    STOPPED = "stopped"


_ALLOWED: Final = {
    (ServerState.STARTING, ServerState.SERVING),
    (ServerState.SERVING, ServerState.DRAINING),
    (ServerState.SERVING, ServerState.CLOSING),
    (ServerState.DRAINING, ServerState.CLOSING),
    *((state, ServerState.STOPPED) for state in ServerState if state is not ServerState.STOPPED),
}
_NOT_ACCEPTING: Final = frozenset({ServerState.DRAINING, ServerState.CLOSING, ServerState.STOPPED})


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
        self.default_cwd = os.getcwd()
        self._lifecycle = Lifecycle("server", ServerState.STARTING, _ALLOWED)
        self._sessions: dict[str, Session] = {}
        self._connections: set[Connection] = set()
        # Replaced on every change of `_connections`: "no connections" is waited for as a
        # condition on the set, never as a latched event.
        self._connections_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.connection_nursery: trio.Nursery | None = None

    # --- state -------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self._lifecycle.state

    def _move(self, new: ServerState) -> None:
        """The one place the server's state changes (see the table in the module docstring)."""
        log.debug("server: %s -> %s", self.state.value, new.value)
        self._lifecycle.move(new)

    @property
    def shutting_down(self) -> bool:
        """No new sessions or processes (draining, closing or stopped)."""
        return self.state in _NOT_ACCEPTING

    @property
    def sessions(self) -> Mapping[str, Session]:
        """The live sessions by id (read-only)."""
        return types.MappingProxyType(self._sessions)

    @property
    def connections(self) -> frozenset[Connection]:
        """The connections being served now."""
        return frozenset(self._connections)

    async def wait_closing(self) -> None:
        """Return once the server closes its connections (the drain ended, or ``stop``)."""
        await self._lifecycle.wait_for({ServerState.CLOSING, ServerState.STOPPED})

    async def wait_stopped(self) -> None:
        """Return once ``run`` has finished (every tree killed)."""
        await self._lifecycle.wait_for({ServerState.STOPPED})

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
                    self._move(ServerState.SERVING)
                    task_status.started(self)
                    await self.wait_closing()
                    # Connections still open here (a second signal, or stop()) are told why.
                    for connection in list(self._connections):
                        connection.close(CloseCode.GOING_AWAY, SHUTTING_DOWN_REASON)
                    with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS):
                        await self._wait_no_connections()
                    connections.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            # Sessions' nurseries were cancelled above, which killed and reaped every
            # tree; this catches a process whose session task never ran.
            self.kill_everything()
            # The last members of killed trees are our orphans once their PID namespace's
            # init is gone: reap them, so that the cgroups they held can be removed.
            with trio.CancelScope(shield=True), trio.move_on_after(LEFTOVER_SETTLE_SECONDS):
                while True:
                    try:
                        _tree.reap_orphans()
                    except OSError as exc:  # out of descriptors: the next start sweeps what is left
                        log.warning("reaping orphans at exit failed: %s", exc)
                        break
                    if self.sandbox.sweep_leftovers():
                        break
                    await trio.sleep(LEFTOVER_SETTLE_SECONDS / 50)
            await watchdog.stop()
            self._move(ServerState.STOPPED)

    async def serve(self, transport: MessageTransport) -> None:
        """Serve one connection until it ends."""
        connection = Connection(self, transport)
        self._connection_added(connection)
        try:
            await connection.run()
        finally:
            self.connection_ended(connection)  # only once the close handshake is over

    def _connection_added(self, connection: Connection) -> None:
        self._connections.add(connection)
        self._connections_changed_now()
        if self.state is ServerState.CLOSING:
            connection.close(CloseCode.GOING_AWAY, SHUTTING_DOWN_REASON)

    def connection_ended(self, connection: Connection) -> None:
        """A connection's teardown has finished."""
        self._connections.discard(connection)
        self._connections_changed_now()

    def _connections_changed_now(self) -> None:
        changed, self._connections_changed = self._connections_changed, trio.Event()
        changed.set()

    async def _wait_no_connections(self) -> None:
        while self._connections:
            await self._connections_changed.wait()

    async def _reap_orphans(self) -> None:
        while True:
            await trio.sleep(ORPHAN_REAP_INTERVAL)
            try:
                _tree.reap_orphans()
            except OSError as exc:  # EMFILE while a peer floods us: the next round reaps them
                log.warning("reaping orphans failed (%s); retrying in %.0fs", exc, ORPHAN_REAP_INTERVAL)

    # --- sessions ----------------------------------------------------------------------

    async def new_session(self, peer: str | None = None) -> Session:
        """A new session, started in the server's nursery.

        Raises:
            ProtocolError: -32005 when the session table is full, -32004 when shutting down.
        """
        if self.shutting_down:
            raise p.ProtocolError(p.ErrorCode.SHUTTING_DOWN, "server shutting down")
        if len(self._sessions) >= self.config.max_sessions:
            raise p.ProtocolError(p.ErrorCode.LIMIT_EXCEEDED, "limit exceeded: too many sessions")
        session = Session(self, peer)
        assert self._nursery is not None
        self._sessions[session.id] = session
        # Started, not just scheduled: a detach right after attach must find its nursery.
        await self._nursery.start(session.run)
        return session

    def find_session(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is None or session.state not in (SessionState.ATTACHED, SessionState.DETACHED):
            return None
        return session

    def session_detached(self, session: Session) -> None:
        """Keep each peer under ``max_detached_per_peer``: its oldest detached sessions end."""
        if session.peer is None:
            return
        detached = sorted(
            (
                other
                for other in self._sessions.values()
                if other.peer == session.peer and other.state is SessionState.DETACHED
            ),
            key=lambda other: other.detached_at,
        )
        for oldest in detached[: max(0, len(detached) - self.config.max_detached_per_peer)]:
            oldest.end(f"over the cap of {self.config.max_detached_per_peer} detached sessions for {session.peer}")

    def session_ended(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

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
                pty=self.sandbox.terminals_available,
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
        connections close with 1001, however many connections came and went before.
        A no-op unless the server is serving.
        """
        if self.state is not ServerState.SERVING:
            return
        grace = self.config.shutdown_grace if grace is None else grace
        self._move(ServerState.DRAINING)
        sessions = list(self._sessions.values())
        processes = [process for session in sessions for process in session.open_processes()]
        await wait_closed(processes, grace)
        for process in processes:
            if not process.is_closed:
                log.info("shutdown: killing the tree of %s after %.1fs grace", process.process_id, grace)
                process.kill_now()
        for session in sessions:
            session.stop_holding()
        # A client that stopped reading must not hold up the exit (lossless has no
        # slow-consumer close): its events stay retained, nobody will read them now.
        for connection in list(self._connections):
            if connection.writer_stuck_for() >= STUCK_WRITER_SECONDS:
                connection.give_up(CloseCode.GOING_AWAY, SHUTTING_DOWN_REASON)
        await wait_closed(processes, KILL_SETTLE_SECONDS)
        for connection in list(self._connections):
            connection.finish(CloseCode.GOING_AWAY, SHUTTING_DOWN_REASON)
        with trio.move_on_after(FLUSH_SECONDS):
            await self._wait_no_connections()
        if self._lifecycle.is_in({ServerState.DRAINING}):  # not if `stop` came first
            self._move(ServerState.CLOSING)

    def kill_everything(self) -> None:
        """Second signal: kill every tree at once."""
        for session in self._sessions.values():
            session.kill_now()

    def stop(self) -> None:
        """Close every connection (1001) and stop, without a drain. Idempotent."""
        if self.state in (ServerState.SERVING, ServerState.DRAINING):
            self._move(ServerState.CLOSING)
