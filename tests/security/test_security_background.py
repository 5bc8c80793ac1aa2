"""No background task of the server dies from an OS error (a peer can make EMFILE happen)."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from conftest import StartServer
from exec_server import _tree
from rawclient import no_leftover_processes, open_raw_client  # noqa: F401  (fixture used by name)


async def test_the_orphan_reaper_survives_emfile(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, no_leftover_processes: None
) -> None:
    calls = 0
    second_call = trio.Event()

    def out_of_descriptors() -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            second_call.set()
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(_tree, "reap_orphans", out_of_descriptors)
    running = await start_server()
    with trio.fail_after(15):
        await second_call.wait()  # the reaper ran again after the error
        async with open_raw_client(running.url, running.token) as client:
            await client.initialize()
            assert await client.call("process/list") == {"processes": []}
