"""The three clients behind one test-side interface: trio, asyncio, and sync.

The behavioural tests (``test_client_flavors.py``) are written once against ``ClientLike``
and ``HandleLike``; each flavor drives the real client its own way:

- ``trio``: ``open_client`` awaited directly on the test's trio loop.
- ``asyncio``: ``open_client`` on an asyncio loop in another thread (an anyio portal);
  every call runs there, so the client's code runs on asyncio for real.
- ``sync``: ``exec_client.connect`` and its blocking methods, called from a worker thread.

Cancellation is the native kind of each: a trio cancel scope, ``asyncio.wait_for``, and
``KeyboardInterrupt`` (SIGINT to a child process running the sync client).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio.from_thread
import trio

import exec_client
import protocol as p

REPO = Path(__file__).resolve().parent.parent


class HandleLike(Protocol):
    process_id: str

    async def wait(self) -> p.TerminalRecord: ...
    async def write(self, data: bytes | str) -> p.WriteStatus: ...
    async def close_stdin(self) -> p.WriteStatus: ...
    async def next_chunk(self) -> p.OutputChunk | None: ...
    async def lines(self) -> list[str]: ...


class ClientLike(Protocol):
    session_id: str
    resumes: int

    async def run(self, command: Any, **kwargs: Any) -> p.TerminalRecord: ...
    async def start(self, command: Any, **kwargs: Any) -> HandleLike: ...
    async def attach(self, process_id: str) -> HandleLike: ...
    async def list(self) -> tuple[exec_client.ListedProcess, ...]: ...
    async def cancelled_run(self, command: Any, after: float) -> None: ...


class Flavor(Protocol):
    name: str

    def open(self, url: str, token: str, **kwargs: Any) -> AbstractAsyncContextManager[ClientLike]: ...


# --- trio ---------------------------------------------------------------------------------


class _TrioHandle:
    def __init__(self, handle: exec_client.ProcessHandle) -> None:
        self._handle = handle
        self.process_id = handle.process_id
        self._iterator: AsyncIterator[p.OutputChunk] | None = None

    async def wait(self) -> p.TerminalRecord:
        return await self._handle.wait()

    async def write(self, data: bytes | str) -> p.WriteStatus:
        return await self._handle.write(data)

    async def close_stdin(self) -> p.WriteStatus:
        return await self._handle.close_stdin()

    async def next_chunk(self) -> p.OutputChunk | None:
        if self._iterator is None:
            self._iterator = aiter(self._handle)
        return await anext(self._iterator, None)

    async def lines(self) -> list[str]:
        return [line async for line in self._handle.lines()]


class _TrioClient:
    def __init__(self, client: exec_client.Client) -> None:
        self._client = client

    @property
    def session_id(self) -> str:
        return self._client.session_id

    @property
    def resumes(self) -> int:
        return self._client.resumes

    async def run(self, command: Any, **kwargs: Any) -> p.TerminalRecord:
        return await self._client.run(command, **kwargs)

    async def start(self, command: Any, **kwargs: Any) -> HandleLike:
        return _TrioHandle(await self._client.start(command, **kwargs))

    async def attach(self, process_id: str) -> HandleLike:
        return _TrioHandle(await self._client.attach(process_id))

    async def list(self) -> tuple[exec_client.ListedProcess, ...]:
        return await self._client.list()

    async def cancelled_run(self, command: Any, after: float) -> None:
        with trio.move_on_after(after) as scope:
            await self._client.run(command)
        assert scope.cancelled_caught


class TrioFlavor:
    name = "trio"

    @asynccontextmanager
    async def open(self, url: str, token: str, **kwargs: Any) -> AsyncIterator[ClientLike]:
        async with exec_client.open_client(url, token=token, **kwargs) as client:
            yield _TrioClient(client)


# --- asyncio (on its own loop thread) ----------------------------------------------------


class _AsyncioHandle:
    def __init__(self, portal: anyio.from_thread.BlockingPortal, handle: exec_client.ProcessHandle) -> None:
        self._portal = portal
        self._handle = handle
        self.process_id = handle.process_id

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await trio.to_thread.run_sync(self._portal.call, fn, *args)

    async def wait(self) -> p.TerminalRecord:
        return await self._call(self._handle.wait)

    async def write(self, data: bytes | str) -> p.WriteStatus:
        return await self._call(self._handle.write, data)

    async def close_stdin(self) -> p.WriteStatus:
        return await self._call(self._handle.close_stdin)

    async def next_chunk(self) -> p.OutputChunk | None:
        async def one() -> p.OutputChunk | None:
            asyncio.get_running_loop()  # this really runs on asyncio
            return await anext(aiter(self._handle), None)

        return await self._call(one)

    async def lines(self) -> list[str]:
        async def collect() -> list[str]:
            return [line async for line in self._handle.lines()]

        return await self._call(collect)


class _AsyncioClient:
    def __init__(self, portal: anyio.from_thread.BlockingPortal, client: exec_client.Client) -> None:
        self._portal = portal
        self._client = client

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: self._portal.call(lambda: fn(*args, **kwargs)))

    @property
    def session_id(self) -> str:
        return self._client.session_id

    @property
    def resumes(self) -> int:
        return self._client.resumes

    async def run(self, command: Any, **kwargs: Any) -> p.TerminalRecord:
        return await self._call(self._client.run, command, **kwargs)

    async def start(self, command: Any, **kwargs: Any) -> HandleLike:
        return _AsyncioHandle(self._portal, await self._call(self._client.start, command, **kwargs))

    async def attach(self, process_id: str) -> HandleLike:
        return _AsyncioHandle(self._portal, await self._call(self._client.attach, process_id))

    async def list(self) -> tuple[exec_client.ListedProcess, ...]:
        return await self._call(self._client.list)

    async def cancelled_run(self, command: Any, after: float) -> None:
        async def cancelled() -> None:
            try:
                await asyncio.wait_for(self._client.run(command), after)
            except TimeoutError:
                return
            raise AssertionError("the run finished before it was cancelled")

        await self._call(cancelled)


class AsyncioFlavor:
    name = "asyncio"

    @asynccontextmanager
    async def open(self, url: str, token: str, **kwargs: Any) -> AsyncIterator[ClientLike]:
        portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        portal = await trio.to_thread.run_sync(portal_cm.__enter__)
        try:
            client_cm = portal.wrap_async_context_manager(exec_client.open_client(url, token=token, **kwargs))
            client = await trio.to_thread.run_sync(client_cm.__enter__)
            try:
                yield _AsyncioClient(portal, client)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(client_cm.__exit__, None, None, None)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(portal_cm.__exit__, None, None, None)


# --- sync (blocking calls from a worker thread) -----------------------------------------------


class _SyncHandle:
    def __init__(self, handle: exec_client.SyncProcessHandle) -> None:
        self._handle = handle
        self.process_id = handle.process_id
        self._iterator = iter(handle)

    async def wait(self) -> p.TerminalRecord:
        return await trio.to_thread.run_sync(self._handle.wait)

    async def write(self, data: bytes | str) -> p.WriteStatus:
        return await trio.to_thread.run_sync(self._handle.write, data)

    async def close_stdin(self) -> p.WriteStatus:
        return await trio.to_thread.run_sync(self._handle.close_stdin)

    async def next_chunk(self) -> p.OutputChunk | None:
        return await trio.to_thread.run_sync(next, self._iterator, None)

    async def lines(self) -> list[str]:
        return await trio.to_thread.run_sync(lambda: list(self._handle.lines()))


class _SyncClient:
    def __init__(self, client: exec_client.SyncClient, url: str, token: str) -> None:
        self._client = client
        self._url = url
        self._token = token

    @property
    def session_id(self) -> str:
        return self._client.session_id

    @property
    def resumes(self) -> int:
        return self._client.resumes

    async def run(self, command: Any, **kwargs: Any) -> p.TerminalRecord:
        return await trio.to_thread.run_sync(lambda: self._client.run(command, **kwargs))

    async def start(self, command: Any, **kwargs: Any) -> HandleLike:
        return _SyncHandle(await trio.to_thread.run_sync(lambda: self._client.start(command, **kwargs)))

    async def attach(self, process_id: str) -> HandleLike:
        return _SyncHandle(await trio.to_thread.run_sync(self._client.attach, process_id))

    async def list(self) -> tuple[exec_client.ListedProcess, ...]:
        return await trio.to_thread.run_sync(self._client.list)

    async def cancelled_run(self, command: Any, after: float) -> None:
        """Ctrl-C in a program blocked in ``SyncClient.run``: a child python gets SIGINT."""
        script = (
            "import sys, exec_client\n"
            "with exec_client.connect(sys.argv[1], token=sys.argv[2]) as client:\n"
            "    print('connected', flush=True)\n"
            "    client.run(sys.argv[3:])\n"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", script, self._url, self._token, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            first = b""
            while not first.endswith(b"\n") and (piece := await process.stdout.receive_some(100)):
                first += piece
            if first != b"connected\n":
                await process.wait()
                raise AssertionError(f"the sync child did not connect: {await process.stderr.receive_some(65536)!r}")
            await trio.sleep(after)  # the run is in flight: this is the user's Ctrl-C moment
            process.send_signal(signal.SIGINT)
            await process.wait()
            stderr = await process.stderr.receive_some(65536)
            assert b"KeyboardInterrupt" in stderr, stderr
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.stdout.aclose()
                await process.stderr.aclose()


class SyncFlavor:
    name = "sync"

    @asynccontextmanager
    async def open(self, url: str, token: str, **kwargs: Any) -> AsyncIterator[ClientLike]:
        client = await trio.to_thread.run_sync(lambda: exec_client.connect(url, token=token, **kwargs))
        try:
            yield _SyncClient(client, url, token)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(client.close)


FLAVORS: dict[str, Flavor] = {flavor.name: flavor for flavor in (TrioFlavor(), AsyncioFlavor(), SyncFlavor())}
