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
    max_concurrent_requests: int = 256
    # Keepalive: a ping every `ping_interval` seconds (0: none); no pong within
    # `ping_timeout` seconds is a dropped connection (the session detaches).
    ping_interval: float = attrs.field(default=15.0, validator=attrs.validators.ge(0))
    ping_timeout: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    # Detached sessions one peer (remote address) may hold; beyond it its oldest end.
    max_detached_per_peer: int = attrs.field(default=256, validator=attrs.validators.ge(1))
