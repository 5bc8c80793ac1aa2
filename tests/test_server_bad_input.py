"""Bad input gets its JSON-RPC error on the request's id, and the connection keeps serving.

Each case sends the offending message, checks the exact error, then proves the same
connection still works with a valid request (and, at the end, a whole process run).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import trio

from rawclient import RawClient, client, no_leftover_processes, open_raw_client, output_of  # noqa: F401


async def still_serving(client: RawClient) -> None:
    """A valid request succeeds on this connection right after the bad one."""
    assert "processes" in await client.call("process/list")


def error_of(response: dict[str, Any], code: int) -> dict[str, Any]:
    assert "error" in response, response
    assert "result" not in response
    error = response["error"]
    assert error["code"] == code, response
    assert isinstance(error["message"], str) and error["message"]
    return error


async def send_for_answer(client: RawClient, text: str) -> dict[str, Any]:
    """Send raw text and return the next message received (for answers with ``id: null``)."""
    seen = len(client.log)
    await client.send_raw(text)
    await client.wait_until(lambda: len(client.log) > seen)
    return client.log[seen]


@pytest.mark.parametrize("text", ["{not json", '{"id": 1, "method": "process/list"', "", "\x00\x01", "[1, 2"])
async def test_parse_error(client: RawClient, text: str) -> None:
    with trio.fail_after(10):
        message = await send_for_answer(client, text)
        error = error_of(message, -32700)
        assert message["id"] is None and message["jsonrpc"] == "2.0"
        assert "data" not in error or error["data"] is None or isinstance(error["data"], dict)
        await still_serving(client)


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],
        "a string",
        42,
        {"jsonrpc": "1.0", "id": 7, "method": "process/list"},
        {"id": 1.5, "method": "process/list"},
        {"id": True, "method": "process/list"},
        {"id": 7, "method": 12},
        {"id": 7, "method": "process/list", "extra": 1},
    ],
)
async def test_invalid_request(client: RawClient, payload: Any) -> None:
    with trio.fail_after(10):
        message = await send_for_answer(client, json.dumps(payload))
        error_of(message, -32600)
        if isinstance(payload, dict) and isinstance(payload.get("id"), int) and not isinstance(payload["id"], bool):
            assert message["id"] == payload["id"]
        await still_serving(client)


async def test_unknown_method(client: RawClient) -> None:
    with trio.fail_after(10):
        error = error_of(await client.request("process/frobnicate", {}), -32601)
        assert "process/frobnicate" in error["message"]
        error_of(await client.request("initialise", {}, request_id="s-1"), -32601)
        await still_serving(client)


@pytest.mark.parametrize(
    ("method", "params", "paths"),
    [
        ("process/start", {"processId": 5, "argv": ["true"]}, ["$.params.processId"]),
        ("process/start", {"processId": "a", "argv": "true"}, ["$.params.argv"]),
        ("process/start", {"processId": "a", "argv": ["true", 3]}, ["$.params.argv[1]"]),
        ("process/start", {"processId": "a", "argv": ["true"], "pipeStdin": "yes"}, ["$.params.pipeStdin"]),
        ("process/start", {"processId": "a", "argv": ["true"], "timeoutMs": 1.5}, ["$.params.timeoutMs"]),
        ("process/start", {"processId": "a", "argv": ["true"], "env": {"A": 1}}, ["$.params.env"]),
        ("process/start", {"processId": "a", "argv": ["true"], "cwd": ""}, ["$.params.cwd"]),
        ("process/start", {"processId": "a", "argv": []}, ["$.params.argv"]),
        ("process/start", {"processId": "a", "argv": ["true"], "sandbox": {"mode": "nope"}}, ["$.params.sandbox.mode"]),
        ("process/start", {"processId": "a", "argv": ["true"], "bogus": 1}, ["$.params.bogus"]),
        ("process/read", {"processId": "a", "afterSeq": "1"}, ["$.params.afterSeq"]),
        ("process/read", {"processId": "a", "afterSeq": -1}, ["$.params.afterSeq"]),
        ("process/read", {"processId": "a", "maxBytes": 0}, ["$.params.maxBytes"]),
        ("process/write", {"processId": "a", "chunk": "not base64!"}, ["$.params.chunk"]),
        ("process/write", {"processId": "a", "eof": 1}, ["$.params.eof"]),
        ("process/signal", {"processId": "a", "signal": "SIGKILL"}, ["$.params.signal"]),
        ("process/terminate", {"processId": "a", "graceMs": -5}, ["$.params.graceMs"]),
        ("initialize", {"clientName": "x", "protocolVersion": "1"}, ["$.params.protocolVersion"]),
    ],
)
async def test_wrong_types(client: RawClient, method: str, params: dict[str, Any], paths: list[str]) -> None:
    with trio.fail_after(10):
        response = await client.request(method, params)
        error = error_of(response, -32602)
        errors = error["data"]["errors"]
        assert isinstance(errors, list) and errors
        for path in paths:
            assert any(e.endswith(f" @ {path}") for e in errors), errors
        for line in errors:
            message, sep, where = line.rpartition(" @ ")
            assert sep and message and where.startswith("$"), line
        await still_serving(client)
        assert client.events_of("a") == []


@pytest.mark.parametrize(
    ("method", "params", "missing"),
    [
        ("process/start", {"argv": ["true"]}, ["$.params.processId"]),
        ("process/start", {"processId": "a"}, ["$.params.argv"]),
        ("process/start", {}, ["$.params.processId", "$.params.argv"]),
        ("process/read", {}, ["$.params.processId"]),
        ("process/signal", {"processId": "a"}, ["$.params.signal"]),
        ("process/write", {"chunk": ""}, ["$.params.processId"]),
    ],
)
async def test_missing_fields(client: RawClient, method: str, params: dict[str, Any], missing: list[str]) -> None:
    with trio.fail_after(10):
        error = error_of(await client.request(method, params), -32602)
        errors = error["data"]["errors"]
        for path in missing:
            assert any(e.endswith(f" @ {path}") for e in errors), errors
        await still_serving(client)


async def test_params_not_an_object(client: RawClient) -> None:
    with trio.fail_after(10):
        error = error_of(await client.request("process/read", ["a", 0]), -32602)
        assert error["data"]["errors"]
        await still_serving(client)


@pytest.mark.parametrize("process_id", ["", "has space", "slash/inside", "x" * 129, "ünïcode", "new\nline"])
async def test_invalid_process_id(client: RawClient, process_id: str) -> None:
    with trio.fail_after(10):
        for method, extra in (("process/start", {"argv": ["true"]}), ("process/read", {}), ("process/release", {})):
            error = error_of(await client.request(method, {"processId": process_id, **extra}), -32602)
            assert any(e.endswith(" @ $.params.processId") for e in error["data"]["errors"]), error
        await still_serving(client)


async def test_longest_valid_process_id(client: RawClient) -> None:
    process_id = "A-z0.9_:" * 16
    assert len(process_id) == 128
    with trio.fail_after(10):
        events = await client.run(process_id, ["echo", "ok"])
        assert output_of(events) == b"ok\n"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("process/read", {"processId": "ghost"}),
        ("process/signal", {"processId": "ghost", "signal": "kill"}),
        ("process/terminate", {"processId": "ghost"}),
        ("process/release", {"processId": "ghost"}),
    ],
)
async def test_unknown_process(client: RawClient, method: str, params: dict[str, Any]) -> None:
    with trio.fail_after(10):
        error_of(await client.request(method, params), -32001)
        await still_serving(client)


async def test_unknown_process_is_per_session(server: Any, client: RawClient) -> None:
    with trio.fail_after(10):
        await client.run("mine", ["true"])
        async with open_raw_client(server.url, server.token) as other:
            await other.initialize()
            error_of(await other.request("process/read", {"processId": "mine"}), -32001)
            # ...and the id is free in the other session.
            await other.run("mine", ["true"])


async def test_duplicate_process(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("d", ["cat"], pipeStdin=True)
        error_of(await client.request("process/start", {"processId": "d", "argv": ["true"]}), -32002)
        await client.call("process/write", {"processId": "d", "eof": True})
        await client.events_for("d")
        # Still a duplicate after it closed, and after it was released (the tombstone).
        error_of(await client.request("process/start", {"processId": "d", "argv": ["true"]}), -32002)
        await client.call("process/release", {"processId": "d"})
        error_of(await client.request("process/start", {"processId": "d", "argv": ["true"]}), -32002)
        # The duplicate attempts spawned nothing and pushed nothing.
        assert [e.kind for e in client.events_of("d")] == ["exited", "closed"]
        await still_serving(client)


async def test_call_before_initialize(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            for method, params in (
                ("process/list", {}),
                ("process/start", {"processId": "early", "argv": ["true"]}),
                ("process/read", {"processId": "early"}),
            ):
                response = await raw.request(method, params)
                error_of(response, -32600)
                assert response["id"] is not None
            assert raw.events == []
            # The connection is still usable: initialize now works.
            await raw.initialize()
            await still_serving(raw)


async def test_second_initialize(client: RawClient) -> None:
    with trio.fail_after(10):
        session_id = client.initialize_result["sessionId"] if client.initialize_result else None
        error_of(await client.request("initialize", {"clientName": "again", "protocolVersion": 1}), -32600)
        await still_serving(client)
        # The session did not change under us: our processes are still ours.
        await client.run("after", ["true"])
        assert session_id is not None


async def test_unsupported_protocol_version(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            error_of(await raw.request("initialize", {"clientName": "x", "protocolVersion": 2}), -32602)
            await raw.initialize()
            await still_serving(raw)


async def test_oversized_message(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(max_message_bytes=4096)
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            result = await raw.initialize()
            assert result["limits"]["maxMessageBytes"] == 4096
            big = {"processId": "big", "argv": ["echo", "x" * 8000]}
            response = await raw.request("process/start", big)
            error = error_of(response, -32005)
            assert "4096" in error["message"]
            assert raw.events_of("big") == []
            # Not a parse error even when the oversized message is not JSON at all.
            error_of(await send_for_answer(raw, "y" * 6_000), -32005)  # under the 2 × 4096 of the WebSocket layer
            await still_serving(raw)
            events = await raw.run("small", ["echo", "fits"])
            assert output_of(events) == b"fits\n"


async def test_many_bad_messages_do_not_disturb_a_running_process(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.start("steady", ["cat"], pipeStdin=True)
        for text in ("nope", "[]", '{"id":1,"method":"x"}', '{"id":2,"method":"process/read","params":{}}'):
            await client.send_raw(text)
        await client.call("process/write", {"processId": "steady", "chunk": "aGk=", "eof": True})
        events = await client.events_for("steady")
        assert output_of(events) == b"hi"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        codes = [m["error"]["code"] for m in client.log if "error" in m]
        assert codes == [-32700, -32600, -32601, -32602]


async def test_oversized_in_bytes_not_characters(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(max_message_bytes=4096)
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            # JSON may carry UTF-8 unescaped: 2000 × "€" is 2106 characters but 6106 bytes.
            params = {"processId": "u", "argv": ["echo", "€" * 2000]}
            request = {"jsonrpc": "2.0", "id": 9, "method": "process/start", "params": params}
            text = json.dumps(request, ensure_ascii=False)
            assert len(text) < 4096 < len(text.encode())
            await raw.send_raw(text)
            response = await raw.response(9)
            if "result" in response:
                await raw.events_for("u")  # it ran: let it finish before failing
            error_of(response, -32005)
            await still_serving(raw)


async def test_notifications_get_no_answer(client: RawClient) -> None:
    """JSON-RPC 2.0 §4.1: the server must not reply to a notification, not even with an error."""
    with trio.fail_after(10):
        await client.notify("$/cancelRequest", {"id": 3})
        await client.notify("initialized", {"unexpected": 1})
        await client.send_raw('{"jsonrpc":"2.0","method":"process/list"}')
        # Messages are handled in order, so any answer to them precedes this response.
        await still_serving(client)
        assert [m for m in client.log if "error" in m] == []


async def test_parked_long_polls_do_not_stop_the_connection(start_server: Any, no_leftover_processes: None) -> None:
    server = await start_server(max_concurrent_requests=4)
    with trio.fail_after(20):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            pid = (await raw.start("quiet", ["cat"], pipeStdin=True))["pid"]
            polls = [await raw.send_request("process/read", {"processId": "quiet", "waitMs": 60_000}) for _ in range(4)]
            try:
                with trio.fail_after(2):
                    # Answered one way or the other (a result, or -32005 for too many requests): the
                    # reader must not be parked behind the long-polls.
                    response = await raw.request("process/list", {})
                    assert "result" in response or response["error"]["code"] == -32005
            finally:
                os.kill(pid, signal.SIGKILL)  # the polls end when the process closes
                for request_id in polls:
                    await raw.response(request_id)
                await raw.events_for("quiet")
