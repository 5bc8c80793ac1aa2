"""``tty: true`` on the server (issue 13): a pseudo-terminal as the command's controlling
terminal, through a real server and the raw client, with real processes and the real sandbox."""

from __future__ import annotations

import base64
import re
import sys
from typing import Any

import pytest
import trio

from rawclient import (  # noqa: F401  (fixtures are used by name)
    Event,
    RawClient,
    client,
    no_leftover_processes,
    open_raw_client,
    output_of,
)

PY = sys.executable


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def exited_of(events: list[Event]) -> dict[str, Any]:
    (exited,) = [e.params for e in events if e.kind == "exited"]
    return exited


def streams_of(events: list[Event]) -> set[str]:
    return {e.params["stream"] for e in events if e.kind == "output"}


async def type_(client: RawClient, process_id: str, data: bytes, **extra: Any) -> None:
    result = await client.call("process/write", {"processId": process_id, "chunk": b64(data), **extra})
    assert result["status"] == "accepted", result


# --- unsandboxed ----------------------------------------------------------------------------


async def test_the_command_has_a_terminal_on_stdin_and_stdout_and_output_is_stream_pty(client: RawClient) -> None:
    with trio.fail_after(10):
        assert client.initialize_result is not None
        assert client.initialize_result["capabilities"]["pty"] is True
        events = await client.run("t", ["sh", "-c", "tty; test -t 0 && test -t 1 && test -t 2 && echo all-ttys"], tty=True)
    out = output_of(events, "pty")
    assert re.match(rb"/dev/pts/\d+\r\n", out), out
    assert b"all-ttys\r\n" in out
    assert streams_of(events) == {"pty"}
    assert exited_of(events)["exitCode"] == 0
    assert [e.kind for e in events][-2:] == ["exited", "closed"]
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_exit_code_propagates_and_stdin_takes_process_write(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("r", ["sh", "-c", "read line; echo got:$line; exit 7"], tty=True)
        await type_(client, "r", b"hello\n")
        events = await client.events_for("r")
    out = output_of(events, "pty")
    assert b"hello\r\n" in out  # the terminal echoes what was typed
    assert b"got:hello\r\n" in out
    assert exited_of(events)["exitCode"] == 7
