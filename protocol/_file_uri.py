"""``file://`` URIs as the Codex dialect and the ``fs/*`` methods carry paths."""

from __future__ import annotations

import urllib.parse

from ._messages import FieldError


def path_from_uri(uri: str, field: str = "path") -> str:
    """``file:///a%20b`` → ``/a b``; anything but an absolute local ``file:`` URI is refused.

    Raises:
        FieldError: not a ``file:`` URI, a remote host, a relative or NUL-bearing path.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file":
        raise FieldError(field, f"expected a file:// URI, got {uri[:80]!r}")
    if parts.netloc not in ("", "localhost"):
        raise FieldError(field, f"file URI names a remote host {parts.netloc[:80]!r}")
    if parts.query or parts.fragment:
        raise FieldError(field, "file URI must not have a query or fragment")
    path = urllib.parse.unquote(parts.path, errors="surrogateescape")
    if not path.startswith("/") or "\0" in path:
        raise FieldError(field, "file URI must name an absolute path")
    return path


def uri_from_path(path: str) -> str:
    return "file://" + urllib.parse.quote(path, safe="/", errors="surrogateescape")
