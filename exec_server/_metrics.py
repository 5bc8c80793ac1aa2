"""Prometheus metrics: what ``GET /metrics`` answers.

Counters and histograms live in this module's own registry (never the process-global
default one) and move through the small ``record_*`` calls that the server core makes.
Gauges of current state (connections, sessions, running processes) are read from the
servers themselves at scrape time, so they can never drift from the truth.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._server import Server

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX: Final = "exec_server"
# Spawn takes ~1-20 ms (fork + launcher + sandbox set-up); a command runs ms to hours.
_SPAWN_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_DURATION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# A `_created` timestamp per counter only doubles the exposition; scrapers have the start time.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY: Final = CollectorRegistry(auto_describe=True)

CONNECTIONS: Final = Counter(
    f"{_PREFIX}_connections", "Connections by outcome of the upgrade", ["result", "reason"], registry=REGISTRY
)
PROCESSES_STARTED: Final = Counter(f"{_PREFIX}_processes_started", "Commands started", ["token"], registry=REGISTRY)
PROCESSES_FAILED: Final = Counter(
    f"{_PREFIX}_processes_failed", "process/start calls refused, by reason", ["reason"], registry=REGISTRY
)
SPAWN_SECONDS: Final = Histogram(
    f"{_PREFIX}_spawn_seconds", "Time to answer a successful process/start", buckets=_SPAWN_BUCKETS, registry=REGISTRY
)
COMPLETION_SECONDS: Final = Histogram(
    f"{_PREFIX}_completion_seconds", "Time from start to closed", buckets=_DURATION_BUCKETS, registry=REGISTRY
)
DENIALS: Final = Counter(f"{_PREFIX}_denials", "Sandbox denials reported, by blocker", ["blocker"], registry=REGISTRY)
OUTPUT_BYTES: Final = Counter(f"{_PREFIX}_output_bytes", "Bytes commands wrote, by stream", ["stream"], registry=REGISTRY)
DROPPED_BYTES: Final = Counter(
    f"{_PREFIX}_dropped_bytes",
    "Output bytes not pushed (bestEffort, full queue; still retained for process/read)",
    registry=REGISTRY,
)
EVICTED_BYTES: Final = Counter(
    f"{_PREFIX}_evicted_bytes", "Output bytes evicted from retention, by stream", ["stream"], registry=REGISTRY
)
SLOW_CONSUMER_CLOSES: Final = Counter(
    f"{_PREFIX}_slow_consumer_closes", "Connections closed with 1008 for not reading", registry=REGISTRY
)
# Bound once: the output hook runs per chunk.
_OUTPUT_BY_STREAM: Final = {stream: OUTPUT_BYTES.labels(stream=stream) for stream in ("stdout", "stderr", "pty")}
RESUMES: Final = Counter(f"{_PREFIX}_resumes", "Sessions resumed by initialize{resumeSessionId}", registry=REGISTRY)
RELOADS: Final = Counter(f"{_PREFIX}_reloads", "SIGHUP reloads, by result", ["result"], registry=REGISTRY)


class _ServerState(Collector):
    """Gauges read from the live servers of this process at scrape time."""

    def __init__(self) -> None:
        self._servers: weakref.WeakSet[Server] = weakref.WeakSet()

    def watch(self, server: Server) -> None:
        self._servers.add(server)

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(f"{_PREFIX}_open_connections", "Open connections")
        sessions = GaugeMetricFamily(f"{_PREFIX}_sessions", "Sessions by state", labels=["state"])
        running = GaugeMetricFamily(f"{_PREFIX}_processes_running", "Commands not yet closed")
        counts = {"attached": 0, "detached": 0}
        open_connections = processes = 0
        for server in list(self._servers):
            open_connections += len(server.connections)
            for session in list(server.sessions.values()):
                state = str(getattr(session.state, "value", session.state))
                counts[state] = counts.get(state, 0) + 1
                processes += sum(1 for process in list(session.processes.values()) if not process.is_closed)
        connections.add_metric([], open_connections)
        for state, count in sorted(counts.items()):
            sessions.add_metric([state], count)
        running.add_metric([], processes)
        yield connections
        yield sessions
        yield running


_STATE: Final = _ServerState()
REGISTRY.register(_STATE)


def watch_server(server: Server) -> None:
    """Include ``server``'s sessions and processes in the gauges."""
    _STATE.watch(server)


def exposition() -> bytes:
    """The Prometheus text exposition of everything above."""
    return generate_latest(REGISTRY)


# --- hooks the server core calls -----------------------------------------------------------


def record_connection(result: str, reason: str) -> None:
    CONNECTIONS.labels(result=result, reason=reason).inc()


def record_start(token: str, spawn_seconds: float) -> None:
    PROCESSES_STARTED.labels(token=token).inc()
    SPAWN_SECONDS.observe(spawn_seconds)


def record_start_failed(reason: str) -> None:
    PROCESSES_FAILED.labels(reason=reason).inc()


def record_output(stream: str, count: int) -> None:
    _OUTPUT_BY_STREAM[stream].inc(count)


def record_close(duration_seconds: float, denial_blockers: list[str], evicted: dict[str, int]) -> None:
    COMPLETION_SECONDS.observe(duration_seconds)
    for blocker in denial_blockers:
        DENIALS.labels(blocker=blocker).inc()
    for stream, count in evicted.items():
        if count:
            EVICTED_BYTES.labels(stream=stream).inc(count)


def record_dropped(count: int) -> None:
    DROPPED_BYTES.inc(count)


def record_slow_consumer_close() -> None:
    SLOW_CONSUMER_CLOSES.inc()


def record_resume() -> None:
    RESUMES.inc()


def record_reload(ok: bool) -> None:
    RELOADS.labels(result="ok" if ok else "failed").inc()
