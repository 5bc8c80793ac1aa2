"""Operator ceilings: the most a request may ask of the sandbox, refused beyond, never narrowed.

Three ceilings, each a ``serve`` flag:

- ``--max-sandbox readOnly|workspaceWrite|none``: the most permissive mode a request may
  name (``readOnly`` < ``workspaceWrite`` < ``none``); ``none`` still needs
  ``--allow-unsandboxed``. A caller (a per-token ceiling) can narrow it further.
- ``--writable-roots-within PATH...``: the cwd and every ``writableRoots`` entry of a
  ``workspaceWrite`` request must lie inside one of these, compared after resolving
  symlinks on both sides (the same resolution the Landlock grant uses).
- ``--allow-network``: without it, ``network: true`` is refused.

A request beyond a ceiling gets -32006 whose message names the ceiling. Silently running it
with less (a read-only sandbox for a write request) would fail later in a way the client
cannot tell from a bug in its command.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

from protocol import ResourceLimits, SandboxMode, SandboxPolicy

from ._errors import SandboxUnavailable
from ._limits import FLAGS

# Permissiveness: a mode may be asked for if its rank is at most the ceiling's.
MODE_RANK: Final = {SandboxMode.READ_ONLY: 0, SandboxMode.WORKSPACE_WRITE: 1, SandboxMode.NONE: 2}
_SIZE_SUFFIXES: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def check_mode(mode: SandboxMode, server_max: SandboxMode, caller_max: SandboxMode | None = None) -> None:
    """Refuse ``mode`` above the server's ceiling or the caller's (narrower) one.

    Raises:
        SandboxUnavailable: naming the ceiling that refused it.
    """
    if MODE_RANK[mode] > MODE_RANK[server_max]:
        raise SandboxUnavailable(
            f'mode "{mode.value}" is above this server\'s ceiling (--max-sandbox {server_max.value})'
        )
    if caller_max is not None and MODE_RANK[mode] > MODE_RANK[caller_max]:
        raise SandboxUnavailable(
            f'mode "{mode.value}" is above this client\'s ceiling (max sandbox {caller_max.value})'
        )


def check_network(policy: SandboxPolicy, allow_network: bool) -> None:
    """Refuse ``network: true`` on a server without ``--allow-network``."""
    if policy.network and not allow_network:
        raise SandboxUnavailable("network: true is not allowed on this server (see --allow-network)")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_within(writable: Sequence[str], within: Sequence[str]) -> None:
    """Refuse a writable path (already resolved) outside every ``--writable-roots-within`` root.

    An empty ``within`` is no ceiling.

    Raises:
        SandboxUnavailable: naming the first path outside and the ceiling.
    """
    if not within:
        return
    roots = [os.path.realpath(root) for root in within]
    for path in writable:
        real = os.path.realpath(path)
        if not any(_inside(real, root) for root in roots):
            raise SandboxUnavailable(
                f"writable path {real!r} is outside this server's ceiling (--writable-roots-within {' '.join(roots)})"
            )


def capabilities(max_mode: SandboxMode, allow_network: bool, within: Sequence[str]) -> dict[str, Any]:
    """The ceilings as ``capabilities.sandbox`` keys."""
    caps: dict[str, Any] = {"maxMode": max_mode.value, "networkAllowed": allow_network}
    if within:
        caps["writableRootsWithin"] = list(within)
    return caps


# --- the serve flags -----------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``268435456``, ``256M``, ``1G`` (binary units) → bytes; for ``argparse`` ``type=``."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if value and value[-1] in _SIZE_SUFFIXES:
        scale, value = _SIZE_SUFFIXES[value[-1]], value[:-1]
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a number with K, M, G or T)")
    return int(value) * scale


def settings_from_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``SandboxSettings`` keyword arguments from the effective settings (``_config.SETTINGS``:
    ``max-sandbox``, ``writable-roots-within``, ``allow-network``, ``limit-*``, ``sandbox``).

    Raises:
        ValueError: a ``--limit-*`` value out of range, or a default mode above the ceiling
            (the message names the flag).
    """
    try:
        limits = ResourceLimits(
            memory_bytes=values["limit-memory"],
            pids=values["limit-pids"],
            cpu_seconds=values["limit-cpu-seconds"],
            file_size_bytes=values["limit-file-size"],
            open_files=values["limit-open-files"],
        )
    except ValueError as exc:
        flag = FLAGS.get(getattr(exc, "field", ""), "--limit-*")
        raise ValueError(f"{flag}: {exc}") from None
    max_mode = SandboxMode(values["max-sandbox"])
    default = SandboxMode(values["sandbox"])
    if MODE_RANK[default] > MODE_RANK[max_mode]:
        raise ValueError(f"--sandbox {default.value} is above --max-sandbox {max_mode.value}")
    writable_roots_within = values["writable-roots-within"]
    allow_network = bool(values["allow-network"])
    return {
        "max_mode": max_mode,
        "writable_roots_within": tuple(os.path.realpath(path) for path in writable_roots_within),
        "allow_network": allow_network,
        "limits": limits,
    }
