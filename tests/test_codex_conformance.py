"""The same Codex-dialect requests to ``codex exec-server`` and to our server: same shapes.

The raw client sends each request exactly as Codex's client does; for every answer the
test compares what a Codex client depends on — the set of result fields and their types,
the error code — between the reference server and ours.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from codex_peer import codex_binary, codex_exec_server
from conftest import RunningServer
from protocol._codex import uri_from_path
from rawclient import RawClient, no_leftover_processes, open_raw_client  # noqa: F401  (fixture used by name)

TIMEOUT: Final = 60.0


@pytest.fixture(autouse=True, scope="module")
def _codex_installed() -> None:
    codex_binary()


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="codex-conformance-", dir="/tmp"))
    (path / "a.txt").write_bytes(b"hello\n")
    (path / "sub").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _shape(value: Any) -> Any:
    """Field names and JSON types, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.fixture
async def reference(tmp_path: Path, no_leftover_processes: None) -> AsyncIterator[RawClient]:
    async with codex_exec_server(tmp_path / "codex-home") as url, open_raw_client(url) as raw:
        yield raw


@pytest.fixture
async def ours(server: RunningServer) -> AsyncIterator[RawClient]:
    async with open_raw_client(server.url, server.token) as raw:
        yield raw


async def _session(raw: RawClient, scratch: Path) -> list[tuple[str, Any]]:
    """One scripted conversation; each step's (label, shape of the answer)."""
    ids = iter(range(1, 1000))

    async def call(method: str, params: Any) -> dict[str, Any]:
        request_id = next(ids)
        await raw.send_raw(json.dumps({"id": request_id, "method": method, "params": params}))
        return await raw.response(request_id)

    def answer(response: dict[str, Any]) -> Any:
        if "error" in response:
            return {"error": response["error"]["code"]}
        return _shape(response["result"])

    steps: list[tuple[str, Any]] = []
    init = await call("initialize", {"clientName": "codex-environment", "resumeSessionId": None})
    assert "result" in init, init
    steps.append(("initialize", sorted(init["result"])))
    await raw.send_raw('{"method":"initialized","params":{}}')
    cwd = uri_from_path(str(scratch))
    start = {
        "processId": "conf-1",
        "argv": ["sh", "-c", "echo out; echo err >&2; exit 4"],
        "cwd": cwd,
        "envPolicy": {"inherit": "core", "ignoreDefaultExcludes": False, "exclude": [], "set": {}, "includeOnly": []},
        "env": {},
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
        "sandbox": None,
        "enforceManagedNetwork": False,
        "managedNetwork": None,
    }
    steps.append(("process/start", answer(await call("process/start", start))))
    events = await raw.events_for("conf-1")
    steps.append(("events", sorted({(e.kind, tuple(sorted(e.params))) for e in events})))
    exited = next(e for e in events if e.kind == "exited").params
    steps.append(("exit code", (exited["exitCode"], exited["sandboxDenied"])))
    read = await call("process/read", {"processId": "conf-1", "afterSeq": None, "maxBytes": None, "waitMs": None})
    steps.append(("process/read", answer(read)))
    steps.append(("read output", sorted(base64.b64decode(c["chunk"]) for c in read["result"]["chunks"])))
    steps.append(("duplicate start", answer(await call("process/start", start))))
    steps.append(("unknown read", answer(await call("process/read", {"processId": "nope", "afterSeq": 0, "maxBytes": None, "waitMs": 0}))))
    file = uri_from_path(str(scratch / "a.txt"))
    for method, params in [
        ("fs/readFile", {"path": file, "sandbox": None}),
        ("fs/readFile", {"path": uri_from_path(str(scratch / "missing")), "sandbox": None}),
        ("fs/readFile", {"path": uri_from_path(str(scratch / "sub")), "sandbox": None}),
        ("fs/readFile", {"path": str(scratch / "a.txt"), "sandbox": None}),
        ("fs/getMetadata", {"path": file, "sandbox": None}),
        ("fs/readDirectory", {"path": cwd, "sandbox": None}),
        ("fs/canonicalize", {"path": uri_from_path(str(scratch / "sub" / ".." / "a.txt")), "sandbox": None}),
        ("fs/walk", {"path": cwd, "options": {"maxDepth": 2, "maxDirectories": 5, "maxEntries": 5, "followDirectorySymlinks": False}, "sandbox": None}),
        ("fs/open", {"handleId": "h", "path": file, "sandbox": None}),
        ("fs/readBlock", {"handleId": "h", "offset": 0, "len": 3}),
        ("fs/close", {"handleId": "h"}),
        ("fs/readBlock", {"handleId": "h", "offset": 0, "len": 3}),
        ("fs/createDirectory", {"path": uri_from_path(str(scratch / "x" / "y")), "recursive": False, "sandbox": None}),
        ("fs/remove", {"path": uri_from_path(str(scratch / "missing")), "recursive": False, "force": False, "sandbox": None}),
        ("fs/remove", {"path": uri_from_path(str(scratch / "missing")), "recursive": False, "force": True, "sandbox": None}),
    ]:
        steps.append((f"{method} {json.dumps(params)[:60]}", answer(await call(method, params))))
    return steps


async def test_our_answers_have_the_shapes_and_codes_of_codex_exec_server(
    reference: RawClient, ours: RawClient, scratch: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        theirs = await _session(reference, scratch)
        mine = await _session(ours, scratch)
    assert [label for label, _ in mine] == [label for label, _ in theirs]
    mismatches = [(label, their, our) for (label, their), (_, our) in zip(theirs, mine, strict=True) if their != our]
    assert not mismatches, "\n".join(f"{label}: codex {their!r} / ours {our!r}" for label, their, our in mismatches)
