"""The operator's sandbox configuration (``exec-server serve`` flags)."""

from __future__ import annotations

import attrs

from protocol import ResourceLimits, SandboxMode


@attrs.frozen
class SandboxSettings:
    """How requests are sandboxed.

    Attributes:
        default_mode: the mode for requests that name no policy (``--sandbox``).
        allow_unsandboxed: whether mode ``none`` may run at all (``--allow-unsandboxed``).
        audit_denials: ``auto`` | ``on`` | ``off`` (``--audit-denials``): exact denial
            reports from kernel audit records, which changes the host's audit state.
        max_mode: the most permissive mode a request may ask for (``--max-sandbox``).
        writable_roots_within: the writable paths of a request must be inside one of these
            (``--writable-roots-within``); empty = anywhere.
        allow_network: whether ``network: true`` may be asked for (``--allow-network``).
        limits: the resource limits' defaults and ceilings (``--limit-*``, ``_limits.py``).
        masked_paths: files and directories a sandboxed command must never read (the
            server's token file and its directory): a mode-000 placeholder is bound over
            each in the command's view. A directory that holds the command's cwd or a
            writable root is not masked (the file inside it still is).
    """

    default_mode: SandboxMode = SandboxMode.READ_ONLY
    allow_unsandboxed: bool = False
    audit_denials: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "on", "off")))
    # --- ceilings and limits (_ceilings.py, _limits.py) ---
    max_mode: SandboxMode = SandboxMode.NONE
    writable_roots_within: tuple[str, ...] = ()
    allow_network: bool = False
    limits: ResourceLimits = ResourceLimits()
    masked_paths: tuple[str, ...] = ()
