"""One file operation, run by ``_fs.py`` inside the request's sandbox.

Started as ``python -I -S _fs_worker.py`` through the sandbox launcher, so the kernel (not
a path check in the server) decides what this process may touch: a write outside the
writable roots fails here with EROFS/EACCES exactly as a sandboxed command's would. It
imports only the standard library. Input: one JSON object on stdin. Output: one JSON object
on stdout, ``{"ok": result}`` or ``{"error": {"kind": ..., "message": ...}}``.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import stat
import sys
from typing import Any


class Refused(Exception):
    """A request the operation itself refuses (not an OS error)."""


def _metadata(path: str) -> dict[str, Any]:
    info = os.lstat(path)
    is_link = stat.S_ISLNK(info.st_mode)
    if is_link:
        try:
            info = os.stat(path)
        except OSError:
            pass
    return {
        "isDirectory": stat.S_ISDIR(info.st_mode),
        "isFile": stat.S_ISREG(info.st_mode),
        "isSymlink": is_link,
        "size": info.st_size,
        "createdAtMs": 0,
        "modifiedAtMs": int(info.st_mtime * 1000),
    }


def _read(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)  # a FIFO must not block
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"path `{path}` is not a file")
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _read_file(path: str, limit: int) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)  # a FIFO must not block
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"path `{path}` is not a file")
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise Refused(f"file `{path}` is larger than {limit} bytes; read it in blocks (fs/open)")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return {"dataBase64": base64.b64encode(b"".join(chunks)).decode("ascii")}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_file(path: str, data: bytes) -> dict[str, Any]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, 0o666)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    return {}


def _append_file(path: str, data: bytes, offset: int) -> dict[str, Any]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)  # never creates
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"path `{path}` is not a file")
        if info.st_size != offset:
            raise Refused(f"file `{path}` is {info.st_size} bytes, not {offset}: refusing to append out of order")
        _write_all(fd, data)
    finally:
        os.close(fd)
    return {}


def _remove(path: str, recursive: bool, force: bool) -> dict[str, Any]:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if force:
            return {}
        raise
    if stat.S_ISDIR(info.st_mode):
        if recursive:
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    else:
        os.unlink(path)
    return {}


def _copy(source: str, destination: str, recursive: bool) -> dict[str, Any]:
    if os.path.isdir(source):
        if not recursive:
            raise Refused(f"path `{source}` is a directory; copy it with recursive")
        shutil.copytree(source, destination, symlinks=True)
    else:
        shutil.copy2(source, destination, follow_symlinks=False)
    return {}


def _walk(root: str, max_depth: int, max_directories: int, max_entries: int, follow: bool) -> dict[str, Any]:
    entries: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    truncated = False
    directories = 0
    pending = [(root, 0)]
    while pending:
        directory, depth = pending.pop(0)
        directories += 1
        if directories > max_directories:
            truncated = True
            break
        try:
            with os.scandir(directory) as scan:
                items = sorted(scan, key=lambda item: item.name)
        except OSError as exc:
            errors.append({"path": directory, "message": exc.strerror or str(exc)})
            continue
        for item in items:
            if len(entries) >= max_entries:
                truncated = True
                break
            if item.is_symlink():
                kind = "directory" if follow and item.is_dir() else "symlink"
            elif item.is_dir(follow_symlinks=False):
                kind = "directory"
            elif item.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            entries.append({"path": item.path, "kind": kind})
            if kind == "directory" and depth + 1 < max_depth:
                pending.append((item.path, depth + 1))
        if truncated:
            break
    return {"entries": entries, "errors": errors, "truncated": truncated}


def run(request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    path = request.get("path", "")
    if op == "readFile":
        return _read_file(path, request["limit"])
    if op == "readBlock":
        data = _read(path, request["offset"], request["len"])
        return {"chunk": base64.b64encode(data).decode("ascii"), "eof": len(data) < request["len"]}
    if op == "open":
        _read(path, 0, 0)
        return {}
    if op == "writeFile":
        return _write_file(path, base64.b64decode(request["data"]))
    if op == "appendFile":
        return _append_file(path, base64.b64decode(request["data"]), request["offset"])
    if op == "createDirectory":
        if request["recursive"]:
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)
        return {}
    if op == "getMetadata":
        return _metadata(path)
    if op == "canonicalize":
        resolved = os.path.realpath(path, strict=True)
        return {"path": resolved}
    if op == "readDirectory":
        with os.scandir(path) as scan:
            return {
                "entries": [
                    {"fileName": item.name, "isDirectory": item.is_dir(), "isFile": item.is_file()} for item in scan
                ]
            }
    if op == "remove":
        return _remove(path, request["recursive"], request["force"])
    if op == "copy":
        return _copy(path, request["destination"], request["recursive"])
    if op == "walk":
        return _walk(path, request["maxDepth"], request["maxDirectories"], request["maxEntries"], request["follow"])
    raise Refused(f"unknown operation {op!r}")


def main() -> int:
    try:
        result: dict[str, Any] = {"ok": run(json.load(sys.stdin))}
    except Refused as exc:
        result = {"error": {"kind": "refused", "message": str(exc)}}
    except OSError as exc:
        code = exc.errno or errno.EIO
        kind = "notFound" if code == errno.ENOENT else "os"
        result = {"error": {"kind": kind, "errno": code, "message": f"{os.strerror(code)} (os error {code})"}}
    json.dump(result, sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
