"""-32603 is for the server's own bugs: input a user can fix gets -32602 or -32007."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import StartServer
from rawclient import no_leftover_processes, open_raw_client  # noqa: F401  (fixture used by name)
from security_support import child_server

LONE = "\ud800"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"argv": ["echo", f"a{LONE}"]}, "$.params.argv[1]"),
        ({"argv": [f"ech{LONE}"]}, "$.params.argv[0]"),
        ({"argv": ["echo"], "env": {f"K{LONE}": "v"}}, "$.params.env"),
        ({"argv": ["echo"], "env": {"K": f"v{LONE}"}}, "$.params.env"),
        ({"argv": ["echo"], "cwd": f"/tmp/{LONE}"}, "$.params.cwd"),
        ({"argv": ["echo"], "sandbox": {"mode": "workspaceWrite", "writableRoots": [f"/tmp/{LONE}"]}},
         "$.params.sandbox.writableRoots[0]"),
    ],
)  # fmt: skip
async def test_a_lone_surrogate_is_invalid_params_naming_the_field(
    start_server: StartServer, params: dict[str, Any], field: str, no_leftover_processes: None
) -> None:
    running = await start_server()
    with trio.fail_after(10):
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            # json.dumps spells the surrogate as a \ud800 escape: valid JSON, invalid Unicode.
            await client.send_raw(
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "process/start", "params": {"processId": "p", **params}})
            )
            response = await client.response(1)
            assert response["error"]["code"] == -32602, response
            assert response["error"]["message"].endswith(f"@ {field}"), response
            assert "surrogate" in response["error"]["message"]
            assert await client.call("process/list") == {"processes": []}


@contextlib.contextmanager
def tiny_tmpfs(path: Path) -> Iterator[Path]:
    """A tmpfs of a few inodes at ``path`` (see ``fill``)."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64,mode=1777", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is refused here (no CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path) -> None:
    """Use every free inode of ``path``'s filesystem: a mkdir there fails with ENOSPC."""
    for index in range(128):
        try:
            (path / f"filler{index}").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return
    raise AssertionError("the filesystem never filled")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
async def test_enospc_on_the_temp_filesystem_is_a_spawn_error_with_its_errno(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    start = {"processId": "p", "argv": ["true"], "cwd": str(tmp_path), "sandbox": {"mode": "workspaceWrite"}}
    with tiny_tmpfs(tmp_path / "tiny") as tiny, trio.fail_after(30):
        async with child_server(tmp_path, "--allow-unsandboxed", env={"TMPDIR": str(tiny)}) as server:
            async with open_raw_client(server.url, server.token) as client:
                await client.initialize()
                # The first private temp dir is made while there is room (Python checks, once,
                # that TMPDIR is writable); then the filesystem fills up.
                await client.run("before", ["true"], cwd=str(tmp_path), sandbox={"mode": "workspaceWrite"})
                fill(tiny)
                error = await client.expect_error("process/start", start, -32007)
                assert error.data["errno"] == "ENOSPC", error.data
                assert server.alive
