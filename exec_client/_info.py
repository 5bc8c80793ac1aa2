"""What the server said about itself and its processes, decoded leniently."""

from __future__ import annotations

from typing import Any

import attrs

import protocol as p

from ._errors import ProtocolViolation


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
    # capabilities.pty: process/start tty: true and process/resize work (defaulted, so
    # that a ServerInfo made without it — another dialect's — says no terminals).
    pty: bool = False
    sandbox: dict[str, Any]
    limits: dict[str, Any]
    resumed: bool
    # "exec-server" (ours) or "codex" (Codex's exec-server dialect; docs/protocol.md §13.3).
    dialect: str = "exec-server"
    # The server's working directory, when it says (Codex's environmentInfo.cwd).
    cwd: str | None = None
    # Each process's events are pushed in seq order (ours; Codex's server reorders them).
    in_order: bool = True

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
            pty=capabilities.get("pty") is True,
            sandbox=sandbox if isinstance(sandbox, dict) else {},
            limits=limits if isinstance(limits, dict) else {},
            resumed=raw.get("resumed") is True,
        )


@attrs.frozen(kw_only=True)
class ListedProcess:
    """One process of ``Client.list()``: what the server says, and the session it belongs to."""

    process_id: str
    pid: int
    argv: tuple[str, ...]
    state: p.ProcessState
    next_seq: int
    session_id: str
