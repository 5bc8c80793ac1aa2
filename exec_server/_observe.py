"""What the server core reports about its work: one call per event, a log line and the metrics.

The core (connection, session, process) calls these at the few places where something an
operator counts happens; this module turns each into the command log line of ``_logging``
and the counters of ``_metrics``, so the core carries no formatting or metric names.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import attrs

from protocol import ErrorCode, ProtocolError, StartParams, StartResult

from . import _logging, _metrics

if TYPE_CHECKING:
    from ._process import ManagedProcess
    from ._transport import MessageTransport


# Bytes each live command wrote, for its close line (entries go with the process).
_output_bytes: weakref.WeakKeyDictionary[ManagedProcess, int] = weakref.WeakKeyDictionary()


def start_refused(error: ProtocolError) -> None:
    try:
        reason = ErrorCode(error.code).name.lower()
    except ValueError:
        reason = str(error.code)
    _metrics.record_start_failed(reason)


def started(
    transport: MessageTransport,
    session_id: str,
    params: StartParams,
    result: StartResult,
    cwd: str,
    default_mode: str,
    spawn_seconds: float,
) -> None:
    principal = transport.principal
    _metrics.record_start(principal.name, spawn_seconds)
    sandbox = params.sandbox
    policy = (
        {"mode": default_mode}
        if sandbox is None
        else {"mode": sandbox.mode.value, "writableRoots": list(sandbox.writable_roots), "network": sandbox.network}
    )
    _logging.command_started(
        session_id=session_id,
        process_id=result.process_id,
        pid=result.pid,
        token=principal.name,
        peer=transport.peer,
        argv=params.argv,
        cwd=cwd,
        policy=policy,
        sandbox_type=result.sandbox_type,
        env_names=sorted(params.env or {}),
    )


def closed(session_id: str, process: ManagedProcess, *, attached: bool) -> None:
    exited = process.exited
    evicted = attrs.asdict(process.retention.evicted_bytes)
    blockers = [denial.blocker for denial in exited.denials] if exited else []
    duration_ms = exited.duration_ms if exited else None
    if duration_ms is not None:
        _metrics.record_close(duration_ms / 1000.0, blockers, evicted)
    _logging.command_closed(
        session_id=session_id,
        process_id=process.process_id,
        exit_code=exited.exit_code if exited else None,
        signal=exited.signal if exited else None,
        timed_out=exited.timed_out if exited else False,
        duration_ms=duration_ms,
        denials=[f"{denial.blocker} {denial.target}" for denial in exited.denials] if exited else [],
        sandbox_denied=exited.sandbox_denied if exited else None,
        output_bytes=_output_bytes.pop(process, 0),
        evicted_bytes=sum(evicted.values()),
        delivery="attached" if attached else "retained",
    )


def output(process: ManagedProcess, stream: str, count: int) -> None:
    _metrics.record_output(stream, count)
    _output_bytes[process] = _output_bytes.get(process, 0) + count


def dropped(count: int) -> None:
    _metrics.record_dropped(count)


def slow_consumer_closed() -> None:
    _metrics.record_slow_consumer_close()


def resumed(session_id: str, transport: MessageTransport) -> None:
    _metrics.record_resume()
    _logging.log_event(
        _logging.connections_log, logging.INFO, "session resumed",
        event="session.resume", session=session_id, token=transport.principal.name, peer=transport.peer,
    )  # fmt: skip
