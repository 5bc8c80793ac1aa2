"""Codex's sandbox permissions profile, sans-io: parsed strictly into ``SandboxProfile``.

Its keys are snake_case and its unions are tagged by ``type``, so it is read by hand
rather than by the converter; anything unknown in it is refused (-32602 naming the member)
rather than ignored, because an ignored restriction would widen the sandbox. What the
server makes of a profile is ``exec_server/_codex_sandbox.py``.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import attrs

from ._file_uri import path_from_uri
from ._errors import ErrorCode, ProtocolError
from ._messages import FieldError


class Access(str, enum.Enum):
    READ = "read"
    WRITE = "write"
    NONE = "none"


class ProfileKind(str, enum.Enum):
    MANAGED = "managed"
    DISABLED = "disabled"
    EXTERNAL = "external"


@attrs.frozen(kw_only=True)
class PermissionEntry:
    """One ``file_system.entries`` item: ``special`` names a Codex special path (``root``,
    ``project_roots``, ``slash_tmp``, ``tmpdir``, …) with an optional ``subpath``; otherwise
    ``path`` is absolute."""

    access: Access
    special: str | None = None
    subpath: str | None = None
    path: str | None = None
    skip_if_missing: bool = False


@attrs.frozen(kw_only=True)
class SandboxProfile:
    kind: ProfileKind
    file_system_unrestricted: bool = False
    entries: tuple[PermissionEntry, ...] = ()
    network_enabled: bool = False
    cwd: str | None = None
    workspace_roots: tuple[str, ...] = ()


_SPECIAL_KINDS: Final = frozenset({"root", "project_roots", "slash_tmp", "tmpdir", "current_working_directory"})
# Far above what Codex sends (a handful of each); bounded because the mapping is entries × roots.
MAX_PROFILE_ENTRIES: Final = 256
MAX_WORKSPACE_ROOTS: Final = 64


class _ProfileError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{message} @ {path}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ProfileError(path, "expected an object")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _ProfileError(path, "expected a string")
    return value


def _uri_path(value: Any, path: str) -> str:
    try:
        return path_from_uri(_string(value, path))
    except FieldError as exc:
        raise _ProfileError(path, str(exc)) from None


def _entry(raw: Any, path: str) -> PermissionEntry:
    item = _object(raw, path)
    access_raw = _string(item.get("access"), f"{path}.access")
    try:
        access = Access(access_raw)
    except ValueError:
        raise _ProfileError(f"{path}.access", f"unknown access {access_raw!r}") from None
    skip = item.get("missing_path_behavior") == "skip"
    target = _object(item.get("path"), f"{path}.path")
    kind = _string(target.get("type"), f"{path}.path.type")
    if kind == "special":
        value = _object(target.get("value"), f"{path}.path.value")
        special = _string(value.get("kind"), f"{path}.path.value.kind")
        if special not in _SPECIAL_KINDS:
            raise _ProfileError(f"{path}.path.value.kind", f"unknown special path {special!r}")
        subpath = value.get("subpath")
        if subpath is not None:
            subpath = _string(subpath, f"{path}.path.value.subpath")
            if subpath.startswith("/") or "\0" in subpath or ".." in subpath.split("/"):
                raise _ProfileError(f"{path}.path.value.subpath", "subpath must be relative and stay inside")
        return PermissionEntry(access=access, special=special, subpath=subpath, skip_if_missing=skip)
    if kind == "path":
        return PermissionEntry(access=access, path=_uri_path(target.get("path"), f"{path}.path.path"), skip_if_missing=skip)
    raise _ProfileError(f"{path}.path.type", f"unsupported path type {kind!r}")


def parse_sandbox(raw: Any, path: str = "$.params.sandbox") -> SandboxProfile | None:
    """The ``sandbox`` field of a Codex request, or None when it is null.

    Raises:
        ProtocolError: -32602 naming the offending member.
    """
    if raw is None:
        return None
    try:
        context = _object(raw, path)
        permissions = _object(context.get("permissions"), f"{path}.permissions")
        kind_raw = _string(permissions.get("type"), f"{path}.permissions.type")
        try:
            kind = ProfileKind(kind_raw)
        except ValueError:
            raise _ProfileError(f"{path}.permissions.type", f"unknown permissions type {kind_raw!r}") from None
        cwd = context.get("cwd")
        cwd_path = _uri_path(cwd, f"{path}.cwd") if cwd is not None else None
        roots_raw = context.get("workspaceRoots") or []
        if not isinstance(roots_raw, list) or len(roots_raw) > MAX_WORKSPACE_ROOTS:
            raise _ProfileError(f"{path}.workspaceRoots", f"expected a list of at most {MAX_WORKSPACE_ROOTS} file URIs")
        roots = tuple(_uri_path(root, f"{path}.workspaceRoots[{i}]") for i, root in enumerate(roots_raw))
        if kind is not ProfileKind.MANAGED:
            return SandboxProfile(kind=kind, cwd=cwd_path, workspace_roots=roots)
        network = permissions.get("network", "restricted")
        if network not in ("restricted", "enabled"):
            raise _ProfileError(f"{path}.permissions.network", f"unknown network policy {network!r}")
        file_system = _object(permissions.get("file_system"), f"{path}.permissions.file_system")
        fs_kind = _string(file_system.get("type"), f"{path}.permissions.file_system.type")
        if fs_kind == "unrestricted":
            return SandboxProfile(
                kind=kind, file_system_unrestricted=True, network_enabled=network == "enabled", cwd=cwd_path, workspace_roots=roots
            )
        if fs_kind != "restricted":
            raise _ProfileError(f"{path}.permissions.file_system.type", f"unknown file system policy {fs_kind!r}")
        entries_raw = file_system.get("entries")
        if not isinstance(entries_raw, list) or len(entries_raw) > MAX_PROFILE_ENTRIES:
            raise _ProfileError(f"{path}.permissions.file_system.entries", f"expected a list of at most {MAX_PROFILE_ENTRIES}")
        entries = tuple(
            _entry(item, f"{path}.permissions.file_system.entries[{i}]") for i, item in enumerate(entries_raw)
        )
    except _ProfileError as exc:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: {exc}", {"errors": [str(exc)]}) from None
    return SandboxProfile(
        kind=kind, entries=entries, network_enabled=network == "enabled", cwd=cwd_path, workspace_roots=roots
    )
