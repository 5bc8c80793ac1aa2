"""The server's configuration: every limit and timeout in one frozen object."""

from __future__ import annotations

from typing import Final

import attrs

from .sandbox import SandboxSettings

MIB: Final = 1024 * 1024
SERVER_NAME: Final = "exec-server"
SERVER_VERSION: Final = "0.1.0"


@attrs.frozen(kw_only=True)
class ServerConfig:
    """What an operator sets (``exec-server serve`` flags map onto these fields)."""

    token: str
    sandbox: SandboxSettings = attrs.Factory(SandboxSettings)
    max_message_bytes: int = 16 * MIB
    max_processes_per_session: int = 1024
    max_sessions: int = 4096
    retain_bytes: int = 8 * MIB
    retain_total_bytes: int = 256 * MIB
    retain_after_close: float = 300.0
    detached_session_ttl: float = 30.0
    slow_consumer_timeout: float = 10.0
    shutdown_grace: float = 10.0
    max_tombstones: int = 4096
    # Outbound queue per connection (see _outbound.py): a count bound for all messages and
    # a byte bound for queued output.
    outbound_queue_messages: int = 4096
    outbound_queue_bytes: int = 16 * MIB
    # process/write payload held by one connection's calls in flight (more: -32005).
    max_pending_write_bytes: int = 16 * MIB
    # argv and env of the records a session holds (more: process/start is -32005).
    max_session_command_bytes: int = 16 * MIB
    max_concurrent_requests: int = 256
