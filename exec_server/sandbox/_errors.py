"""The sandbox's one error: the kernel (or this install) cannot enforce what was asked."""

from __future__ import annotations


class SandboxUnavailable(Exception):
    """The requested sandbox cannot be enforced here, so the command is not run.

    The server answers -32006 with ``str(exc)``. Never caught to run a command unsandboxed.
    """
