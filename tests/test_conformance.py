"""Conformance: a client written only from the wire protocol (docs/protocol.md).

It uses a different WebSocket library (``websockets``' sync client, in a worker thread)
and plain ``json``; nothing from our ``protocol`` package or ``exec_client``. It drives
every method of §4–§5 and checks every invariant of §6 on what it receives. In the
default ``bestEffort`` delivery the server may drop output events (§8), so the checker
repairs seq gaps with ``process/read`` exactly as the protocol prescribes, and proves
that the repair fills them exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import websockets.exceptions
from websockets.sync.client import ClientConnection, connect

from nspid import host_pid
from rawclient import (  # noqa: F401  (test plumbing only: no protocol code)
    PidWatch,
    cli_env,
    no_leftover_processes,
    open_raw_client,
    run_cli_server,
)

RECV_TIMEOUT = 20.0


class Rpc(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error["code"]
        self.message = error["message"]
        self.data = error.get("data")


class Client:
    """A JSON-RPC 2.0 client of the exec protocol over one WebSocket (synchronous)."""

    def __init__(self, url: str, token: str | None, *, subprotocol_auth: bool = False) -> None:
        headers = {}
        subprotocols = None
        if token is not None and subprotocol_auth:
            subprotocols = [f"bearer.{token}"]
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._connection = connect(
            url,
            additional_headers=headers,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            max_size=64 * 1024 * 1024,
            proxy=None,
            open_timeout=10,
        )
        # websockets 17 wants the connection entered as a context manager.
        self.ws: ClientConnection = self._connection.__enter__()
        self.next_id = 0
        self.arrivals: list[dict[str, Any]] = []  # everything, in arrival order
        self.responses: dict[Any, dict[str, Any]] = {}

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- framing ---

    def send(self, message: dict[str, Any] | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def receive(self) -> dict[str, Any]:
        frame = self.ws.recv(timeout=RECV_TIMEOUT)
        assert isinstance(frame, str), "one JSON-RPC message per text frame"
        message = json.loads(frame)
        assert isinstance(message, dict)
        self.arrivals.append(message)
        if "method" not in message:
            self.responses[message.get("id")] = message
        return message

    def request(self, method: str, params: dict[str, Any] | None = None, request_id: Any = None) -> dict[str, Any]:
        if request_id is None:
            self.next_id += 1
            request_id = self.next_id
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        while request_id not in self.responses:
            self.receive()
        response = self.responses.pop(request_id)
        assert response.get("jsonrpc", "2.0") == "2.0"
        assert ("result" in response) != ("error" in response), response
        return response

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = self.request(method, params)
        if "error" in response:
            raise Rpc(response["error"])
        return response["result"]

    def error(self, method: str, params: dict[str, Any] | None, code: int) -> Rpc:
        response = self.request(method, params)
        assert "error" in response, f"{method} {params}: expected {code}, got {response}"
        assert response["error"]["code"] == code, response
        return Rpc(response["error"])

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    # --- session and processes ---

    def initialize(self, **extra: Any) -> dict[str, Any]:
        result = self.call("initialize", {"clientName": "conformance", "clientVersion": "1", "protocolVersion": 1, **extra})
        self.notify("initialized", {})
        return result

    def events(self, process_id: str) -> list[dict[str, Any]]:
        return [m for m in self.arrivals if "id" not in m and m.get("params", {}).get("processId") == process_id]

    def wait_for(self, process_id: str, predicate: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        while not predicate(self.events(process_id)):
            events = self.events(process_id)
            assert not any(e["method"] == "process/closed" for e in events), f"closed before the awaited event: {events}"
            self.receive()
        return self.events(process_id)

    def start(self, process_id: str, argv: list[str], **params: Any) -> dict[str, Any]:
        result = self.call("process/start", {"processId": process_id, "argv": argv, **params})
        assert result["processId"] == process_id
        assert isinstance(result["pid"], int) and isinstance(result["sandboxType"], str)
        return result

    def finish(self, process_id: str) -> Record:
        """Wait for ``closed`` and check every §6 invariant; gaps are repaired by reads."""
        self.wait_for(process_id, lambda evs: any(e["method"] == "process/closed" for e in evs))
        return check_invariants(self, process_id)

    def run(self, process_id: str, argv: list[str], **params: Any) -> Record:
        self.start(process_id, argv, **params)
        return self.finish(process_id)


class Record:
    """One process's complete, verified history: output per stream and the exit."""

    def __init__(self, chunks: dict[int, tuple[str, bytes]], exited: dict[str, Any], closed_seq: int, reads: int) -> None:
        self.chunks = chunks
        self.exited = exited
        self.closed_seq = closed_seq
        self.reads = reads

    def output(self, stream: str = "stdout") -> bytes:
        return b"".join(data for _seq, (s, data) in sorted(self.chunks.items()) if s == stream)


def check_invariants(client: Client, process_id: str) -> Record:
    events = client.events(process_id)
    methods = [e["method"] for e in events]
    assert set(methods) <= {"process/output", "process/exited", "process/closed"}, methods
    seqs = [e["params"]["seq"] for e in events]
    # §6 invariant 2: in seq order on this connection (and no duplicates).
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    # §6 invariant 4: closed is the last event and carries the last seq; it follows exited.
    assert methods.count("process/closed") == 1 and methods[-1] == "process/closed", methods
    # §6 invariant 5: exited is never dropped.
    assert methods.count("process/exited") == 1, methods
    exited = events[methods.index("process/exited")]["params"]
    closed_seq = events[-1]["params"]["seq"]
    assert exited["seq"] < closed_seq
    for field in ("exitCode", "signal", "timedOut", "sandboxDenied", "durationMs"):
        assert field in exited, field
    assert isinstance(exited["sandboxDenied"], bool)
    assert 0 <= exited["exitCode"] <= 255
    if exited["signal"] is not None:
        assert exited["signal"] == signal.Signals(exited["exitCode"] - 128).name
    # The start response was written before the first event (§6 invariant 2).
    start_at = next(
        i
        for i, m in enumerate(client.arrivals)
        if isinstance(m.get("result"), dict) and m["result"].get("processId") == process_id
    )
    assert start_at < client.arrivals.index(events[0])
    # §6 invariant 1: seqs 1..closed, one counter; whatever output was dropped (§8) a read repairs exactly.
    chunks = {
        e["params"]["seq"]: (e["params"]["stream"], base64.b64decode(e["params"]["chunk"]))
        for e in events
        if e["method"] == "process/output"
    }
    missing = set(range(1, closed_seq + 1)) - set(seqs)
    reads = 0
    if missing:
        after = min(missing) - 1
        while True:
            read = client.call("process/read", {"processId": process_id, "afterSeq": after})
            reads += 1
            assert read["retainedFromSeq"] <= after + 1, "output evicted: the test must not hit retention"
            for chunk in read["chunks"]:
                data = base64.b64decode(chunk["chunk"])
                if chunk["seq"] in chunks:
                    assert chunks[chunk["seq"]] == (chunk["stream"], data)
                chunks[chunk["seq"]] = (chunk["stream"], data)
            assert read["nextSeq"] > after
            after = read["nextSeq"] - 1
            if after >= closed_seq:
                break
        assert read["closed"] is True and read["exitCode"] == exited["exitCode"]
    assert set(chunks) | {exited["seq"], closed_seq} == set(range(1, closed_seq + 1))
    assert not set(chunks) & {exited["seq"], closed_seq}
    return Record(chunks, exited, closed_seq, reads)


# --- running a synchronous scenario next to the trio server -----------------------------


async def in_thread(scenario: Callable[..., None], *args: Any) -> None:
    # The websockets calls all carry their own timeouts, so the thread always ends.
    with trio.fail_after(90):
        await trio.to_thread.run_sync(scenario, *args)


def session(url: str, token: str, **initialize: Any) -> tuple[Client, dict[str, Any]]:
    client = Client(url, token)
    return client, client.initialize(**initialize)


# --- §1 transport and auth ----------------------------------------------------------------


def auth_scenario(url: str, token: str) -> None:
    for headers, subprotocols in (
        ({}, None),
        ({"Authorization": "Bearer not-the-token"}, None),
        ({}, ["bearer.not-the-token"]),
    ):
        with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
            with connect(url, additional_headers=headers, subprotocols=subprotocols, proxy=None, open_timeout=10):
                pass
        assert caught.value.response.status_code == 401
    with Client(url, token, subprotocol_auth=True) as client:
        assert client.ws.subprotocol == f"bearer.{token}"
        client.initialize()


async def test_auth(server: Any, no_leftover_processes: None) -> None:
    await in_thread(auth_scenario, server.url, server.token)


# --- §4 session, §5 methods, §6 invariants ---------------------------------------------


def methods_scenario(url: str, token: str, tmp: str) -> None:
    client = Client(url, token)
    # §3: a call before initialize is an invalid request.
    client.error("process/list", {}, -32600)
    init = client.initialize()
    assert isinstance(init["sessionId"], str) and init["sessionId"]
    assert init["protocolVersion"] == 1 and init["serverName"] and init["serverVersion"]
    caps = init["capabilities"]
    assert caps["pushEvents"] is True and caps["lossless"] is True and caps["release"] is True
    assert isinstance(caps["sandbox"]["available"], bool) and isinstance(caps["sandbox"]["types"], list)
    assert isinstance(init["limits"], dict)
    client.error("initialize", {"clientName": "again", "protocolVersion": 1}, -32600)

    # process/start: argv executed directly, cwd, env, inheritEnv, exit code, both streams.
    record = client.run("one", ["sh", "-c", 'echo "$FOO"; pwd; echo oops >&2; exit 3'], cwd=tmp, env={"FOO": "bar baz"})
    assert record.output() == f"bar baz\n{tmp}\n".encode()
    assert record.output("stderr") == b"oops\n"
    assert record.exited["exitCode"] == 3 and record.exited["signal"] is None and record.exited["timedOut"] is False
    usage = record.exited.get("usage")
    if usage is not None:
        assert usage["userCpuMs"] >= 0 and usage["systemCpuMs"] >= 0 and usage["maxRssKb"] > 0
    record = client.run("noenv", ["/usr/bin/env"], env={"ONLY": "1"}, inheritEnv=False)
    assert b"ONLY=1\n" in record.output() and b"PATH=" not in record.output()
    record = client.run("argv", ["printf", "%s|", "a b", "$HOME", "*"])
    assert record.output() == b"a b|$HOME|*|"  # no shell

    # Spawn failure: -32007 with errno.
    error = client.error("process/start", {"processId": "missing", "argv": ["/no/such/program"]}, -32007)
    assert error.data["errno"] == "ENOENT" and error.data["strerror"]
    error = client.error("process/start", {"processId": "badcwd", "argv": ["true"], "cwd": "/no/such/dir"}, -32007)
    assert error.data["errno"] == "ENOENT"

    # process/write: data, writeId de-duplication, eof, statuses.
    client.start("cat", ["cat"], pipeStdin=True)
    for _ in range(2):
        once = {"processId": "cat", "chunk": b64(b"\x00\xffonce"), "writeId": "a"}
        assert client.call("process/write", once)["status"] == "accepted"
    assert client.call("process/write", {"processId": "cat", "chunk": b64(b"-end"), "eof": True})["status"] == "accepted"
    record = client.finish("cat")
    assert record.output() == b"\x00\xffonce-end"
    assert client.call("process/write", {"processId": "cat", "chunk": b64(b"x")})["status"] == "stdinClosed"
    assert client.call("process/write", {"processId": "nobody", "chunk": b64(b"x")})["status"] == "unknownProcess"

    # process/read: all, afterSeq, maxBytes, terminal state.
    read = client.call("process/read", {"processId": "one"})
    for field in ("chunks", "nextSeq", "retainedFromSeq", "exited", "exitCode", "signal", "timedOut", "sandboxDenied", "closed"):
        assert field in read, field
    assert read["exited"] is True and read["closed"] is True and read["exitCode"] == 3
    all_chunks = read["chunks"]
    assert [c["seq"] for c in all_chunks] == sorted(c["seq"] for c in all_chunks)
    first = client.call("process/read", {"processId": "one", "afterSeq": 0, "maxBytes": 1})
    assert len(first["chunks"]) == 1 and first["chunks"][0] == all_chunks[0]  # the first chunk is always included
    rest = client.call("process/read", {"processId": "one", "afterSeq": first["nextSeq"] - 1})
    assert first["chunks"] + rest["chunks"] == all_chunks
    assert client.call("process/read", {"processId": "one", "afterSeq": 1000})["chunks"] == []

    # Long-poll: returns when output arrives (not after the full wait).
    client.start("lp", ["cat"], pipeStdin=True)
    before = time.monotonic()
    client.send({"jsonrpc": "2.0", "id": "poll", "method": "process/read", "params": {"processId": "lp", "waitMs": 30000}})
    client.call("process/list", {})  # answered after the read was taken up
    client.call("process/write", {"processId": "lp", "chunk": b64(b"wake"), "eof": True})
    while "poll" not in client.responses:
        client.receive()
    polled = client.responses.pop("poll")["result"]
    assert time.monotonic() - before < 20
    assert [base64.b64decode(c["chunk"]) for c in polled["chunks"]] == [b"wake"]
    client.finish("lp")

    # process/signal to the group; process/terminate with escalation; running flag.
    client.start("int", ["sh", "-c", 'trap "echo parent-int" INT; sh -c "$0"; exit 9', INTERRUPTIBLE])
    client.wait_for("int", lambda evs: b"ready" in b"".join(b64d(e) for e in evs if e["method"] == "process/output"))
    assert client.call("process/signal", {"processId": "int", "signal": "interrupt"})["delivered"] is True
    record = client.finish("int")
    assert record.output() == b"ready\nchild-int\nparent-int\n" and record.exited["exitCode"] == 9
    client.start("stubborn", ["sh", "-c", 'trap "" TERM; echo ready; exec sleep 60'])
    client.wait_for("stubborn", lambda evs: any(e["method"] == "process/output" for e in evs))
    assert client.call("process/terminate", {"processId": "stubborn", "graceMs": 100})["running"] is True
    record = client.finish("stubborn")
    assert record.exited["exitCode"] == 137 and record.exited["signal"] == "SIGKILL"
    assert client.call("process/terminate", {"processId": "stubborn"})["running"] is False
    client.start("term", ["sleep", "60"])
    assert client.call("process/signal", {"processId": "term", "signal": "terminate"})["delivered"] is True
    assert client.finish("term").exited["signal"] == "SIGTERM"

    # timeoutMs kills the tree; partial output kept.
    record = client.run("slow", ["sh", "-c", "echo partial; exec sleep 60"], timeoutMs=200)
    assert record.exited["timedOut"] is True and record.exited["exitCode"] == 137 and record.exited["signal"] == "SIGKILL"
    assert record.output() == b"partial\n"

    # process/list, process/release.
    listed = {p["processId"]: p for p in client.call("process/list", {})["processes"]}
    assert listed["one"]["state"] == "closed" and listed["one"]["argv"] == ["sh", "-c", 'echo "$FOO"; pwd; echo oops >&2; exit 3']
    assert listed["one"]["nextSeq"] == client.call("process/read", {"processId": "one"})["nextSeq"]
    assert {"processId", "pid", "argv", "state", "nextSeq"} <= set(listed["cat"])
    client.start("busy", ["cat"], pipeStdin=True)
    client.error("process/release", {"processId": "busy"}, -32008)
    client.call("process/write", {"processId": "busy", "eof": True})
    client.finish("busy")
    assert client.call("process/release", {"processId": "busy"}) == {}
    assert client.call("process/release", {"processId": "busy"}) == {}
    client.error("process/read", {"processId": "busy"}, -32003)
    client.error("process/release", {"processId": "never"}, -32001)
    assert "busy" not in {p["processId"] for p in client.call("process/list", {})["processes"]}

    # §3 errors, each followed by a working call on the same connection.
    client.send("{oops")
    while not any(m.get("id", 0) is None for m in client.arrivals):
        client.receive()
    bad = next(m for m in client.arrivals if m.get("id", 0) is None)
    assert bad["error"]["code"] == -32700
    client.error("process/nothing", {}, -32601)
    error = client.error("process/start", {"processId": 7, "argv": "ls"}, -32602)
    assert all(" @ $" in line for line in error.data["errors"]) and len(error.data["errors"]) >= 1
    error = client.error("process/start", {"processId": "no spaces allowed", "argv": ["true"]}, -32602)
    client.error("process/read", {"processId": "ghost"}, -32001)
    client.error("process/start", {"processId": "one", "argv": ["true"]}, -32002)
    response = client.request("process/list", {}, request_id="string-id")
    assert response["id"] == "string-id" and "processes" in response["result"]
    # Receivers accept messages without "jsonrpc" (Codex omits it).
    client.send({"id": 4242, "method": "process/list", "params": {}})
    while 4242 not in client.responses:
        client.receive()
    assert "result" in client.responses.pop(4242)
    client.close()


# Plain sh (no interpreter path that a sandboxed uid may not reach). The trap is set before
# "ready"; the short sleeps bound how long a signal that lands between two of them waits.
INTERRUPTIBLE = 'trap "echo child-int; exit 3" INT; echo ready; while :; do sleep 0.05; done'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64d(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["params"]["chunk"])


async def test_every_method(server: Any, no_leftover_processes: None, tmp_path: Path) -> None:
    await in_thread(methods_scenario, server.url, server.token, str(tmp_path.resolve()))


def invariants_scenario(url: str, token: str) -> None:
    client, _ = session(url, token)
    # §6 invariants 1, 2, 4 on interleaved streams, several processes at once.
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo out$i; echo err$i >&2; done"
    for n in range(8):
        client.start(f"mix{n}", ["sh", "-c", script])
    for n in range(8):
        record = client.finish(f"mix{n}")
        assert record.output() == b"".join(b"out%d\n" % i for i in range(1, 11))
        assert record.output("stderr") == b"".join(b"err%d\n" % i for i in range(1, 11))
    quiet = client.run("quiet", ["true"])
    assert quiet.exited["seq"] == 1 and quiet.closed_seq == 2

    # §6 invariant 3: exited does not wait for a grandchild holding stdout; later output follows it.
    client.start("bg", ["sh", "-c", "exec 3<&0; (read x <&3; echo late:$x) & echo early"], pipeStdin=True)
    events = client.wait_for("bg", lambda evs: any(e["method"] == "process/exited" for e in evs))
    assert not any(e["method"] == "process/closed" for e in events)
    read = client.call("process/read", {"processId": "bg"})
    assert read["exited"] is True and read["closed"] is False
    exited_seq = next(e["params"]["seq"] for e in events if e["method"] == "process/exited")
    client.call("process/write", {"processId": "bg", "chunk": b64(b"go\n"), "eof": True})
    record = client.finish("bg")
    assert b"".join(d for s, (_st, d) in sorted(record.chunks.items()) if s < exited_seq) == b"early\n"
    assert b"".join(d for s, (_st, d) in sorted(record.chunks.items()) if s > exited_seq) == b"late:go\n"

    # §6 invariant 3: output written before the exit is sequenced before exited.
    size = 700_000
    for n in range(6):
        block = f"head -c {size} /dev/zero | tr '\\0' x; head -c {size} /dev/zero | tr '\\0' y >&2"
        client.start(f"blk{n}", ["sh", "-c", block])
    for n in range(6):
        record = client.finish(f"blk{n}")
        assert all(seq < record.exited["seq"] for seq in record.chunks)
        assert record.output() == b"x" * size and record.output("stderr") == b"y" * size

    # A grandchild that left the group holds the pipe; terminate ends the whole tree.
    tree = client.start("tree", ["sh", "-c", "setsid sh -c 'echo $$; exec sleep 60' & exec sleep 60"])
    events = client.wait_for("tree", lambda evs: any(b"\n" in b64d(e) for e in evs if e["method"] == "process/output"))
    printed = int(b"".join(b64d(e) for e in events if e["method"] == "process/output"))
    grandchild = PidWatch(host_pid(printed, tree["pid"]))  # it printed its PID-namespace pid
    assert client.call("process/terminate", {"processId": "tree", "graceMs": 2000})["running"] is True
    record = client.finish("tree")
    assert record.exited["signal"] == "SIGTERM"
    grandchild.wait_exited_sync()
    client.close()


async def test_invariants(server: Any, no_leftover_processes: None) -> None:
    await in_thread(invariants_scenario, server.url, server.token)


def burst_scenario(url: str, token: str) -> None:
    """Many processes started back to back and ending together: each history is complete."""
    with Client(url, token) as client:
        client.initialize()
        for n in range(48):
            start = {"processId": f"t{n}", "argv": ["true"]}
            client.send({"jsonrpc": "2.0", "id": f"s{n}", "method": "process/start", "params": start})
        for n in range(48):
            record = client.finish(f"t{n}")
            assert record.exited["exitCode"] == 0 and record.chunks == {}


async def test_burst(server: Any, no_leftover_processes: None) -> None:
    await in_thread(burst_scenario, server.url, server.token)


def big_output_scenario(url: str, token: str, path: str, expected_sha: str, size: int, delivery: str) -> None:
    client, _ = session(url, token, delivery=delivery)
    record = client.run("big", ["cat", path])
    data = record.output()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == expected_sha
    if delivery == "lossless":
        # Nothing dropped: everything arrived by push, no read was needed.
        assert record.reads == 0
    client.close()


async def test_20_mib_binary_by_push(server: Any, no_leftover_processes: None, tmp_path: Path) -> None:
    size = 20 * 1024 * 1024
    payload = os.urandom(size)
    (tmp_path / "blob").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    await in_thread(big_output_scenario, server.url, server.token, str(tmp_path / "blob"), digest, size, "lossless")


async def test_big_output_best_effort_is_complete_after_repair(
    start_server: Any, no_leftover_processes: None, tmp_path: Path
) -> None:
    # bestEffort may drop output events; with retention large enough, one read per gap run
    # restores every byte (§8).
    server = await start_server(retain_bytes=32 * 1024 * 1024)
    size = 12 * 1024 * 1024
    payload = os.urandom(size)
    (tmp_path / "blob").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    await in_thread(big_output_scenario, server.url, server.token, str(tmp_path / "blob"), digest, size, "bestEffort")


def resume_scenario(url: str, token: str) -> None:
    first = Client(url, token)
    session_id = first.initialize()["sessionId"]
    first.start("survivor", ["cat"], pipeStdin=True)
    first.call("process/write", {"processId": "survivor", "chunk": b64(b"before;")})
    first.wait_for("survivor", lambda evs: any(e["method"] == "process/output" for e in evs))
    first.close()  # detached: the process keeps running, its output is retained

    with Client(url, token) as second:
        result = second.initialize(resumeSessionId=session_id)
        assert result["sessionId"] == session_id and result.get("resumed") is True
        listed = {p["processId"]: p for p in second.call("process/list", {})["processes"]}
        assert listed["survivor"]["state"] == "running" and listed["survivor"]["nextSeq"] == 2
        # Catch up with a read from the last contiguous seq, then live events flow again.
        caught_up = second.call("process/read", {"processId": "survivor", "afterSeq": 0})
        assert [base64.b64decode(c["chunk"]) for c in caught_up["chunks"]] == [b"before;"]
        second.call("process/write", {"processId": "survivor", "chunk": b64(b"after"), "eof": True})
        events = second.wait_for("survivor", lambda evs: any(e["method"] == "process/closed" for e in evs))
        assert [e["params"]["seq"] for e in events] == list(range(2, 2 + len(events)))
        assert b"".join(b64d(e) for e in events if e["method"] == "process/output") == b"after"

        # A third connection resuming the same session takes it over: the second is closed 4001.
        with Client(url, token) as third:
            assert third.initialize(resumeSessionId=session_id)["resumed"] is True
            with pytest.raises(websockets.exceptions.ConnectionClosed) as caught:
                while True:
                    second.receive()
            assert caught.value.rcvd is not None and caught.value.rcvd.code == 4001
            assert "survivor" in {p["processId"] for p in third.call("process/list", {})["processes"]}
    # An unknown session cannot be resumed.
    with Client(url, token) as fourth:
        # (protocol.md names no code for it: any error, and the connection still serves.)
        response = fourth.request("initialize", {"clientName": "x", "protocolVersion": 1, "resumeSessionId": "no-such-session"})
        assert "error" in response
        assert fourth.initialize()["sessionId"] != session_id


async def test_resume_and_takeover(server: Any, no_leftover_processes: None) -> None:
    await in_thread(resume_scenario, server.url, server.token)


async def test_against_the_cli_server_with_its_defaults(tmp_path: Path, no_leftover_processes: None) -> None:
    """What an independent checker runs: ``exec-server serve`` as shipped (readOnly sandbox by
    default, denial audit where available), driven over the wire by this client."""
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(tmp_path / "token")]
    with trio.fail_after(90):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            token = (tmp_path / "token").read_text().strip()
            async with open_raw_client(url, token) as probe:
                sandbox = (await probe.initialize())["capabilities"]["sandbox"]
            if not sandbox["available"]:
                pytest.skip("no kernel sandbox here: the default server refuses to run commands")
            await in_thread(burst_scenario, url, token)
            # /tmp, not tmp_path: the sandboxed uid may not enter pytest's private directories.
            await in_thread(methods_scenario, url, token, "/tmp")
            await in_thread(invariants_scenario, url, token)
            await in_thread(resume_scenario, url, token)
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
