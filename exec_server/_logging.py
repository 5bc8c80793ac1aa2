"""The server's log: text or JSON lines on stderr, and the one line per command start and close.

Structured fields travel on a record as ``extra={"fields": {...}}``; the text format appends
them as ``key=value``, the JSON format (``--log-format json``) makes each record one object
per line. What is never logged: a token, or the values of a command's environment (only
the names of the variables a request set).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs

LOG_FORMATS: Final = ("text", "json")
_TEXT_FORMAT: Final = "%(asctime)s %(name)s %(levelname)s %(message)s"
# Commands whose start was logged and whose close is not yet: bounded by the running
# processes (each entry goes at close), but capped anyway so a bug cannot grow it.
_MAX_OPEN_COMMANDS: Final = 1 << 16

commands_log = logging.getLogger("exec_server.commands")
connections_log = logging.getLogger("exec_server.connections")


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the structured fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping) and fields:
            line += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        return line


def configure(level: str, log_format: str) -> None:
    """Send every log record to stderr in ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# --- the command lines ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _OpenCommand:
    token: str
    peer: str
    started: float


_open_commands: dict[tuple[str, str], _OpenCommand] = {}


def command_started(
    *,
    session_id: str,
    process_id: str,
    pid: int,
    token: str,
    peer: str,
    argv: tuple[str, ...],
    cwd: str,
    policy: Mapping[str, Any],
    sandbox_type: str,
    env_names: list[str],
) -> None:
    """The line for a command that was spawned."""
    if len(_open_commands) < _MAX_OPEN_COMMANDS:
        _open_commands[(session_id, process_id)] = _OpenCommand(token=token, peer=peer, started=time.monotonic())
    log_event(
        commands_log,
        logging.INFO,
        "command started",
        event="command.start",
        session=session_id,
        process=process_id,
        pid=pid,
        token=token,
        peer=peer,
        argv=list(argv),
        cwd=cwd,
        policy=dict(policy),
        sandboxType=sandbox_type,
        envNames=env_names,
    )


def command_closed(
    *,
    session_id: str,
    process_id: str,
    exit_code: int | None,
    signal: str | None,
    timed_out: bool,
    duration_ms: float | None,
    denials: list[str],
    sandbox_denied: bool | None,
    output_bytes: int,
    evicted_bytes: int,
    delivery: str,
) -> None:
    """The line for a command that closed (``delivery``: whether a client was attached)."""
    opened = _open_commands.pop((session_id, process_id), None)
    log_event(
        commands_log,
        logging.INFO,
        "command closed",
        event="command.close",
        session=session_id,
        process=process_id,
        token=opened.token if opened else None,
        peer=opened.peer if opened else None,
        exitCode=exit_code,
        signal=signal,
        timedOut=timed_out,
        durationMs=duration_ms,
        denials=denials,
        sandboxDenied=sandbox_denied,
        outputBytes=output_bytes,
        evictedBytes=evicted_bytes,
        delivery=delivery,
    )
