"""Client for the exec server: run remote commands and get one trustworthy terminal record.

The same API three ways — asyncio or trio (``open_client``, one async client on anyio),
and sync code (``connect``):

    async with open_client("ws://127.0.0.1:8765", token=token) as client:
        record = await client.run(["sh", "-c", "echo hi; exit 3"])
        assert record.exit_code == 3 and record.stdout == b"hi\\n"

    with connect("ws://127.0.0.1:8765", token=token) as client:
        print(client.run("echo hi").stdout)

Names are imported on first use, so that ``exec-client`` starts quickly (a build tool
calls it once per command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> the module that defines it (relative to this package, or "protocol").
_EXPORTS: dict[str, str] = {
    "Completion": "protocol",
    "OutputChunk": "protocol",
    "SandboxPolicy": "protocol",
    "TerminalRecord": "protocol",
    "DEFAULT_URL": "._client",
    "Client": "._client",
    "ClientState": "._client",
    "ListedProcess": "._info",
    "ServerInfo": "._info",
    "new_process_id": "._arguments",
    "open_client": "._client",
    "decode_frame": "._core",
    "HandleState": "._handle",
    "ProcessHandle": "._handle",
    "IllegalTransition": "._lifecycle",
    "DirEntry": "._files",
    "FileStat": "._files",
    "SyncClient": "._sync",
    "SyncProcessHandle": "._sync",
    "connect": "._sync",
    **{
        name: "._errors"
        for name in (
            "CommandFailed",
            "ConnectionFailed",
            "ConnectionLost",
            "DuplicateProcess",
            "ExecClientError",
            "InitializeRefused",
            "InvalidParams",
            "LimitExceeded",
            "NotSupported",
            "NotTerminal",
            "OutputOverrun",
            "ProcessReleased",
            "ProtocolViolation",
            "PtyUnsupported",
            "RemoteFileError",
            "RemoteFileNotFound",
            "RemotePermissionError",
            "SandboxUnavailable",
            "ServerError",
            "ServerShuttingDown",
            "SpawnFailed",
            "UnknownProcess",
        )
    },
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'exec_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from protocol import Completion as Completion
    from protocol import OutputChunk as OutputChunk
    from protocol import SandboxPolicy as SandboxPolicy
    from protocol import TerminalRecord as TerminalRecord

    from ._client import DEFAULT_URL as DEFAULT_URL
    from ._client import Client as Client
    from ._client import ClientState as ClientState
    from ._arguments import new_process_id as new_process_id
    from ._info import ListedProcess as ListedProcess
    from ._info import ServerInfo as ServerInfo
    from ._client import open_client as open_client
    from ._core import decode_frame as decode_frame
    from ._errors import CommandFailed as CommandFailed
    from ._errors import ConnectionFailed as ConnectionFailed
    from ._errors import ConnectionLost as ConnectionLost
    from ._errors import DuplicateProcess as DuplicateProcess
    from ._errors import ExecClientError as ExecClientError
    from ._errors import InitializeRefused as InitializeRefused
    from ._errors import InvalidParams as InvalidParams
    from ._errors import LimitExceeded as LimitExceeded
    from ._errors import NotSupported as NotSupported
    from ._errors import NotTerminal as NotTerminal
    from ._errors import OutputOverrun as OutputOverrun
    from ._errors import ProcessReleased as ProcessReleased
    from ._errors import ProtocolViolation as ProtocolViolation
    from ._errors import PtyUnsupported as PtyUnsupported
    from ._errors import RemoteFileError as RemoteFileError
    from ._errors import RemoteFileNotFound as RemoteFileNotFound
    from ._errors import RemotePermissionError as RemotePermissionError
    from ._files import DirEntry as DirEntry
    from ._files import FileStat as FileStat
    from ._errors import SandboxUnavailable as SandboxUnavailable
    from ._errors import ServerError as ServerError
    from ._errors import ServerShuttingDown as ServerShuttingDown
    from ._errors import SpawnFailed as SpawnFailed
    from ._errors import UnknownProcess as UnknownProcess
    from ._handle import HandleState as HandleState
    from ._handle import ProcessHandle as ProcessHandle
    from ._lifecycle import IllegalTransition as IllegalTransition
    from ._sync import SyncClient as SyncClient
    from ._sync import SyncProcessHandle as SyncProcessHandle
    from ._sync import connect as connect
