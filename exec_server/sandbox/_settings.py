"""The operator's sandbox configuration (``exec-server serve`` flags)."""

from __future__ import annotations

from typing import Final

import attrs

from protocol import ResourceLimits, SandboxMode

NOBODY: Final = 65534


@attrs.frozen
class SandboxSettings:
    """How requests are sandboxed.

    Attributes:
        default_mode: the mode for requests that name no policy (``--sandbox``).
        allow_unsandboxed: whether mode ``none`` may run at all (``--allow-unsandboxed``).
        audit_denials: ``auto`` | ``on`` | ``off`` (``--audit-denials``): exact denial
            reports from kernel audit records, which changes the host's audit state.
        fallback_uid: when the server runs as root and the workspace is root-owned, the
            unprivileged uid commands run as (default ``nobody``).
        fallback_gid: the gid that goes with ``fallback_uid``.
        run_as_workspace_owner: as root, run commands as the owner of their workspace
            (when not root) rather than always as ``fallback_uid`` (see ``_identity.py``).
        max_mode: the most permissive mode a request may ask for (``--max-sandbox``).
        writable_roots_within: the writable paths of a request must be inside one of these
            (``--writable-roots-within``); empty = anywhere.
        allow_network: whether ``network: true`` may be asked for (``--allow-network``).
        limits: the resource limits' defaults and ceilings (``--limit-*``, ``_limits.py``).
    """

    default_mode: SandboxMode = SandboxMode.READ_ONLY
    allow_unsandboxed: bool = False
    audit_denials: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "on", "off")))
    fallback_uid: int = attrs.field(default=NOBODY, validator=attrs.validators.gt(0))
    fallback_gid: int = attrs.field(default=NOBODY, validator=attrs.validators.gt(0))
    run_as_workspace_owner: bool = True
    # --- ceilings and limits (_ceilings.py, _limits.py) ---
    max_mode: SandboxMode = SandboxMode.NONE
    writable_roots_within: tuple[str, ...] = ()
    allow_network: bool = False
    limits: ResourceLimits = ResourceLimits()
