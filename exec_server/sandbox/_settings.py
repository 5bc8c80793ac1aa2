"""The operator's sandbox configuration (``exec-server serve`` flags)."""

from __future__ import annotations

import attrs

from protocol import SandboxMode


@attrs.frozen
class SandboxSettings:
    """How requests are sandboxed.

    Attributes:
        default_mode: the mode for requests that name no policy (``--sandbox``).
        allow_unsandboxed: whether mode ``none`` may run at all (``--allow-unsandboxed``).
        audit_denials: ``auto`` | ``on`` | ``off`` (``--audit-denials``): exact denial
            reports from kernel audit records, which changes the host's audit state.
        masked_paths: files and directories a sandboxed command must never read (the
            server's token file and its directory): a mode-000 placeholder is bound over
            each in the command's view. A directory that holds the command's cwd or a
            writable root is not masked (the file inside it still is).
    """

    default_mode: SandboxMode = SandboxMode.READ_ONLY
    allow_unsandboxed: bool = False
    audit_denials: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "on", "off")))
    masked_paths: tuple[str, ...] = ()
