"""No process outlives its command: the PID namespace's init is how a whole tree is killed.

The escapee leaves the command's process group and session (``setsid``) and scrubs its
environment (``env -i``, so no tree marker), and holds none of the command's pipes. It still
lives in the command's PID namespace, so it dies with the namespace's init: when its command
closes, on TTL expiry, on the server's SIGTERM, and when the server is SIGKILLed (the init
watches the server's pidfd; the watchdog kills the marked init too). Sandboxed and
unsandboxed commands alike.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Final

import psutil
import pytest
import trio

from exec_server.sandbox import SandboxSettings
from protocol import SandboxMode
from rawclient import no_leftover_processes, open_raw_client  # noqa: F401
from test_delivery_support import subprocess_server, wait_pid_exit

# A duration no other test uses: how the escapee is found on the host.
ESCAPEE_SECONDS: Final = "987.654"
ESCAPE: Final = f"setsid env -i /bin/sleep {ESCAPEE_SECONDS} </dev/null >/dev/null 2>&1 & echo started"
SANDBOXES: Final = [{"mode": "none"}, {"mode": "readOnly"}]
BOTH_ALLOWED: Final = SandboxSettings(default_mode=SandboxMode.READ_ONLY, allow_unsandboxed=True, audit_denials="off")


def escapees() -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["/bin/sleep", ESCAPEE_SECONDS]:
            found.append(proc.pid)
    return found


async def wait_for_escapee() -> int:
    while not (found := escapees()):
        await trio.sleep(0.01)  # polling a host-side fact (the exec), not synchronising with the server
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(autouse=True)
def no_stale_escapee() -> None:
    for pid in escapees():
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sandbox", SANDBOXES, ids=["none", "readOnly"])
async def test_the_escapee_dies_when_its_command_closes(
    sandbox: dict[str, Any], start_server: Any, no_leftover_processes: None
) -> None:
    server = await start_server(sandbox=BOTH_ALLOWED)
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            # The command waits for its stdin, so the escapee is seen alive before it closes.
            await raw.start("escape", ["sh", "-c", ESCAPE + "; read line"], sandbox=sandbox, cwd="/tmp", pipeStdin=True)
            escapee = await wait_for_escapee()
            await raw.call("process/write", {"processId": "escape", "chunk": "", "eof": True})
            events = await raw.events_for("escape")
            assert [e.kind for e in events][-2:] == ["exited", "closed"]
            await wait_pid_exit(escapee)


async def test_the_escapee_dies_on_ttl_expiry(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(sandbox=BOTH_ALLOWED, detached_session_ttl=0.3)
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            # The command itself waits: only the TTL ends it.
            await raw.start("escape", ["sh", "-c", ESCAPE + "; sleep 300"], cwd="/tmp")
            escapee = await wait_for_escapee()
        await wait_pid_exit(escapee)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_the_escapee_dies_with_the_server(how: signal.Signals, tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with subprocess_server(tmp_path, "--shutdown-grace", "1") as server:
            async with open_raw_client(server.url, server.token) as raw:
                await raw.initialize()
                await raw.start("escape", ["sh", "-c", ESCAPE + "; sleep 300"], cwd="/tmp")
                escapee = await wait_for_escapee()
                os.kill(server.pid, how)
                await wait_pid_exit(escapee)
