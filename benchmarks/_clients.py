"""The client under test: ``exec_client`` when it is importable, else the raw pushed loop.

Every measurement names which one it used, so a number is never attributed to the wrong code.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import protocol as p

from ._raw import RawConnection, Spec

_ids = itertools.count(1)


def _fresh_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


class BenchClient(Protocol):
    name: str
    binary_output: bool

    async def run(
        self, argv: Sequence[str], *, sandbox: p.SandboxPolicy | None = None, max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES
    ) -> p.TerminalRecord: ...


class _ExecClient:
    name = "exec_client"

    def __init__(self, client: Any, binary_output: bool) -> None:
        self._client = client
        self.binary_output = binary_output

    async def run(
        self, argv: Sequence[str], *, sandbox: p.SandboxPolicy | None = None, max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES
    ) -> p.TerminalRecord:
        record: p.TerminalRecord = await self._client.run(argv, sandbox=sandbox, max_output_bytes=max_output_bytes)
        return record


class _RawClient:
    name = "raw"

    def __init__(self, connection: RawConnection) -> None:
        self._connection = connection
        self.binary_output = connection.binary_output

    async def run(
        self, argv: Sequence[str], *, sandbox: p.SandboxPolicy | None = None, max_output_bytes: int | None = p.DEFAULT_MAX_OUTPUT_BYTES
    ) -> p.TerminalRecord:
        spec = Spec(process_id=_fresh_id("raw"), argv=tuple(argv), sandbox=sandbox)
        [record] = await self._connection.run_pushed([spec], max_output_bytes=max_output_bytes)
        await self._connection.release([spec.process_id])
        return record


def exec_client_available() -> bool:
    try:
        from exec_client import open_client  # noqa: F401
    except ImportError:
        return False
    return True


def exec_client_supports_binary() -> bool:
    if not exec_client_available():
        return False
    from exec_client import open_client

    return "binary_output" in inspect.signature(open_client).parameters


@contextlib.asynccontextmanager
async def open_bench_client(
    url: str,
    token: str,
    *,
    delivery: p.Delivery = p.Delivery.LOSSLESS,
    binary_output: bool = True,
    prefer_raw: bool = False,
) -> AsyncIterator[BenchClient]:
    """A session through ``exec_client`` (unless ``prefer_raw`` or it lacks a feature asked for).

    The defaults are ``open_client``'s own (lossless delivery, binary output frames): what users get.
    """
    use_exec_client = not prefer_raw and exec_client_available() and (not binary_output or exec_client_supports_binary())
    if use_exec_client:
        from exec_client import open_client

        kwargs: dict[str, Any] = {"token": token, "delivery": delivery, "client_name": "bench"}
        if exec_client_supports_binary():
            kwargs["binary_output"] = binary_output  # explicit: the client's default is binary
        async with open_client(url, **kwargs) as client:
            negotiated = bool(getattr(getattr(client, "info", None), "binary_output", False)) if binary_output else False
            yield _ExecClient(client, negotiated)
        return
    async with RawConnection.open(url, token, delivery=delivery, binary_output=binary_output) as connection:
        yield _RawClient(connection)
