"""The codec as synchronous round trips and tables: what goes in, which message or error comes out.

No I/O: every test encodes or decodes a string (style.md, "Protocol tests are synchronous
round trips and state-table tests").
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Final

import attrs
import pytest

import protocol as p

ALL_BYTES: Final = bytes(range(256))
# Every -32602 detail is "<message> @ $.<camelCase path>", list items as [i].
ERROR_LINE_RE: Final = re.compile(r"^.+ @ \$\.(params|result)(\.[a-z][A-Za-z]*|\[\d+\])*$")


def request_text(method: str, params: Any, request_id: p.RequestId = 7) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def decode_error(text: str | bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(text)
    return info.value


def params_errors(method: str, params: Any, request_id: p.RequestId = 7) -> list[str]:
    """Decode a call that must fail with -32602 and return its ``data.errors``."""
    error = decode_error(request_text(method, params, request_id))
    assert error.code == p.ErrorCode.INVALID_PARAMS, error
    assert error.request_id == request_id
    assert error.data is not None
    errors = error.data["errors"]
    assert errors, "an invalid-params error must say what is wrong"
    assert error.message == f"invalid params: {errors[0]}"
    return errors


# --- valid messages -------------------------------------------------------------------------

FULL_START: Final = p.StartParams(
    process_id="build-1:step.2_x",
    argv=("sh", "-c", "echo 'hi there' >&2; exit 3", "ünïcødé ✓"),
    cwd="/tmp/work dir",
    env={"PATH": "/usr/bin", "EMPTY": "", "WITH_EQUALS_VALUE": "a=b"},
    inherit_env=False,
    pipe_stdin=True,
    timeout_ms=60_000,
    sandbox=p.SandboxPolicy(mode=p.SandboxMode.WORKSPACE_WRITE, writable_roots=("/tmp", "/var/tmp"), network=True),
    retain_bytes=1024,
    retain_after_close_ms=0,
    limits=p.ResourceLimits(memory_bytes=1 << 28, pids=64, cpu_seconds=5, file_size_bytes=4096, open_files=256),
)

REQUESTS: Final[list[tuple[str, Any]]] = [
    ("initialize", p.InitializeParams(client_name="c", protocol_version=1)),
    (
        "initialize",
        p.InitializeParams(
            client_name="exec-client",
            protocol_version=1,
            client_version="0.1.0",
            resume_session_id="s-123",
            delivery=p.Delivery.LOSSLESS,
            binary_output=True,
        ),
    ),
    ("process/start", p.StartParams(process_id="a", argv=("true",))),
    ("process/start", FULL_START),
    ("process/start", p.StartParams(process_id="a", argv=("x",), sandbox=p.SandboxPolicy(mode=p.SandboxMode.READ_ONLY))),
    ("process/read", p.ReadParams(process_id="a")),
    ("process/read", p.ReadParams(process_id="a", after_seq=41, max_bytes=4096, wait_ms=30_000)),
    ("process/write", p.WriteParams(process_id="a")),
    ("process/write", p.WriteParams(process_id="a", chunk=ALL_BYTES, write_id="w-1", eof=True)),
    *[("process/signal", p.SignalParams(process_id="a", signal=signal)) for signal in p.SignalName],
    ("process/terminate", p.TerminateParams(process_id="a")),
    ("process/terminate", p.TerminateParams(process_id="a", grace_ms=0)),
    ("process/release", p.ReleaseParams(process_id="a")),
    ("process/resize", p.ResizeParams(process_id="a", rows=24, cols=80)),
    ("process/start", p.StartParams(process_id="a", argv=("sh",), tty=True, size=p.TerminalSize(rows=50, cols=132))),
    ("process/list", p.EmptyParams()),
]

USAGE: Final = p.Usage(user_cpu_ms=1.5, system_cpu_ms=0.25, max_rss_kb=2048)
DENIALS: Final = (p.Denial(blocker="fs.make_reg", target="/etc/x"), p.Denial(blocker="net.connect", target="1.2.3.4:80"))

NOTIFICATIONS: Final[list[tuple[str, Any]]] = [
    ("initialized", p.InitializedParams()),
    ("process/output", p.OutputEvent(process_id="a", seq=1, stream=p.Stream.STDOUT, chunk=b"hello\n")),
    ("process/output", p.OutputEvent(process_id="a", seq=2, stream=p.Stream.STDERR, chunk=ALL_BYTES)),
    ("process/output", p.OutputEvent(process_id="a", seq=3, stream=p.Stream.STDOUT, chunk=b"")),
    ("process/exited", p.ExitedEvent(process_id="a", seq=4, exit_code=3, signal=None, timed_out=False)),
    (
        "process/exited",
        p.ExitedEvent(
            process_id="a",
            seq=5,
            exit_code=137,
            signal="SIGKILL",
            timed_out=True,
            sandbox_denied=True,
            duration_ms=12.345,
            usage=USAGE,
            denials=DENIALS,
            sandbox_denied_source="audit",
        ),
    ),
    ("process/closed", p.ClosedEvent(process_id="a", seq=6)),
]

CAPABILITIES: Final = p.Capabilities(
    push_events=True,
    lossless=True,
    release=True,
    sandbox={"available": True, "types": ["landlock", "seccomp"], "nested": {"abi": 7, "x": None}},
    binary_output=True,
)
LIMITS: Final = p.Limits(
    max_message_bytes=16 * 1024 * 1024,
    max_processes_per_session=1024,
    retain_bytes=8 * 1024 * 1024,
    retain_total_bytes=256 * 1024 * 1024,
    retain_after_close_ms=300_000,
    detached_session_ttl_ms=30_000,
    slow_consumer_timeout_ms=10_000,
)
MINIMAL_READ: Final = p.ReadResult(
    chunks=(),
    next_seq=1,
    retained_from_seq=1,
    exited=False,
    exit_code=None,
    signal=None,
    timed_out=False,
    sandbox_denied=None,
    closed=False,
)
FULL_READ: Final = p.ReadResult(
    chunks=(
        p.OutputChunk(seq=3, stream=p.Stream.STDOUT, chunk=b"out"),
        p.OutputChunk(seq=4, stream=p.Stream.STDERR, chunk=ALL_BYTES),
    ),
    next_seq=7,
    retained_from_seq=3,
    exited=True,
    exit_code=130,
    signal="SIGINT",
    timed_out=False,
    sandbox_denied=False,
    closed=True,
    failure=None,
    last_seq=6,
    duration_ms=1000.0,
    usage=USAGE,
    denials=DENIALS,
    sandbox_denied_source="none",
    evicted_bytes=p.StreamBytes(stdout=10, stderr=0),
)

RESULTS: Final[list[tuple[str, Any]]] = [
    (
        "initialize",
        p.InitializeResult(
            session_id="s",
            server_name="exec-server",
            server_version="0.1.0",
            protocol_version=1,
            capabilities=CAPABILITIES,
            limits=LIMITS,
        ),
    ),
    (
        "initialize",
        p.InitializeResult(
            session_id="s",
            server_name="exec-server",
            server_version="0.1.0",
            protocol_version=1,
            capabilities=p.Capabilities(push_events=False, lossless=False, release=False, sandbox={}),
            limits=LIMITS,
            resumed=True,
        ),
    ),
    ("process/start", p.StartResult(process_id="a", pid=4242, sandbox_type="landlock")),
    ("process/read", MINIMAL_READ),
    ("process/read", FULL_READ),
    ("process/read", attrs.evolve(MINIMAL_READ, next_seq=2, exited=True, exit_code=0, closed=True, failure="reaper lost")),
    *[("process/write", p.WriteResult(status=status)) for status in p.WriteStatus],
    ("process/signal", p.SignalResult(delivered=True)),
    ("process/terminate", p.TerminateResult(running=False)),
    ("process/release", p.EmptyResult()),
    ("process/resize", p.EmptyResult()),
    ("process/list", p.ListResult(processes=())),
    (
        "process/list",
        p.ListResult(
            processes=tuple(
                p.ProcessInfo(process_id=f"p{i}", pid=100 + i, argv=("sleep", str(i)), state=state, next_seq=i + 1)
                for i, state in enumerate(p.ProcessState)
            )
        ),
    ),
]


def _id(value: Any) -> str:
    return type(value).__name__


@pytest.mark.parametrize(("method", "params"), REQUESTS, ids=[f"{m}-{_id(x)}-{i}" for i, (m, x) in enumerate(REQUESTS)])
@pytest.mark.parametrize("request_id", [0, 17, -1, 2**53, "", "req-1"])
def test_request_round_trip(method: str, params: Any, request_id: p.RequestId) -> None:
    text = p.encode_request(request_id, params, method if method == "process/list" else None)
    envelope = json.loads(text)
    assert envelope["jsonrpc"] == "2.0"
    assert envelope["method"] == method
    assert p.decode(text) == p.Request(request_id, method, params)
    # The generic encoder produces the same message.
    assert p.decode(p.encode(p.Request(request_id, method, params))) == p.Request(request_id, method, params)


@pytest.mark.parametrize(("method", "params"), NOTIFICATIONS, ids=[f"{m}-{i}" for i, (m, _x) in enumerate(NOTIFICATIONS)])
def test_notification_round_trip(method: str, params: Any) -> None:
    text = p.encode_notification(params)
    envelope = json.loads(text)
    assert "id" not in envelope
    assert envelope["method"] == method
    assert p.decode(text) == p.Notification(method, params)
    assert p.decode(p.encode(p.Notification(method, params))) == p.Notification(method, params)


@pytest.mark.parametrize(("method", "result"), RESULTS, ids=[f"{m}-{i}" for i, (m, _x) in enumerate(RESULTS)])
@pytest.mark.parametrize("request_id", [3, "r"])
def test_result_round_trip(method: str, result: Any, request_id: p.RequestId) -> None:
    response = p.decode(p.encode_result(request_id, result))
    assert isinstance(response, p.Response)
    assert response.id == request_id
    assert p.decode_result(method, response.result) == result
    # Response.result stays raw, and the generic encoder writes the same bytes.
    assert p.encode(p.Response(request_id, result)) == p.encode_result(request_id, result)


def test_every_method_is_covered_by_the_round_trip_tables() -> None:
    assert {method for method, _x in REQUESTS} == set(p.REQUEST_METHODS)
    assert {method for method, _x in RESULTS} == set(p.REQUEST_METHODS)
    assert {method for method, _x in NOTIFICATIONS} == set(p.NOTIFICATION_METHODS)


def test_encode_request_needs_the_method_only_for_parameterless_calls() -> None:
    with pytest.raises(KeyError):
        p.encode_request(1, p.EmptyParams())
    assert json.loads(p.encode_request(1, p.EmptyParams(), "process/list"))["params"] == {}


# --- wire shape ----------------------------------------------------------------------------------


def test_start_params_wire_names_are_camel_case() -> None:
    params = json.loads(p.encode_request(1, FULL_START))["params"]
    assert params == {
        "processId": "build-1:step.2_x",
        "argv": ["sh", "-c", "echo 'hi there' >&2; exit 3", "ünïcødé ✓"],
        "cwd": "/tmp/work dir",
        "env": {"PATH": "/usr/bin", "EMPTY": "", "WITH_EQUALS_VALUE": "a=b"},
        "inheritEnv": False,
        "pipeStdin": True,
        "timeoutMs": 60_000,
        "sandbox": {"mode": "workspaceWrite", "writableRoots": ["/tmp", "/var/tmp"], "network": True},
        "retainBytes": 1024,
        "retainAfterCloseMs": 0,
        "limits": {"memoryBytes": 1 << 28, "pids": 64, "cpuSeconds": 5, "fileSizeBytes": 4096, "openFiles": 256},
    }


def test_read_result_wire_names_and_base64_chunks() -> None:
    result = json.loads(p.encode_result(1, FULL_READ))["result"]
    assert result == {
        "chunks": [
            {"seq": 3, "stream": "stdout", "chunk": "b3V0"},
            {"seq": 4, "stream": "stderr", "chunk": base64.b64encode(ALL_BYTES).decode()},
        ],
        "nextSeq": 7,
        "retainedFromSeq": 3,
        "exited": True,
        "exitCode": 130,
        "signal": "SIGINT",
        "timedOut": False,
        "sandboxDenied": False,
        "closed": True,
        "failure": None,
        "lastSeq": 6,
        "durationMs": 1000.0,
        "usage": {"userCpuMs": 1.5, "systemCpuMs": 0.25, "maxRssKb": 2048},
        "denials": [{"blocker": "fs.make_reg", "target": "/etc/x"}, {"blocker": "net.connect", "target": "1.2.3.4:80"}],
        "sandboxDeniedSource": "none",
        "evictedBytes": {"stdout": 10, "stderr": 0},
        "limitExceeded": None,
    }


def test_initialize_wire_names() -> None:
    result = json.loads(p.encode_result(1, RESULTS[0][1]))["result"]
    assert result["capabilities"] == {
        "pushEvents": True,
        "lossless": True,
        "release": True,
        "sandbox": {"available": True, "types": ["landlock", "seccomp"], "nested": {"abi": 7, "x": None}},
        "binaryOutput": True,
        "pty": False,
    }
    assert set(result["limits"]) == {
        "maxMessageBytes",
        "maxProcessesPerSession",
        "retainBytes",
        "retainTotalBytes",
        "retainAfterCloseMs",
        "detachedSessionTtlMs",
        "slowConsumerTimeoutMs",
    }
    assert result["resumed"] is False
    params = json.loads(p.encode_request(1, REQUESTS[1][1]))["params"]
    assert params == {
        "clientName": "exec-client",
        "protocolVersion": 1,
        "clientVersion": "0.1.0",
        "resumeSessionId": "s-123",
        "delivery": "lossless",
        "binaryOutput": True,
    }


def test_exited_event_wire_names() -> None:
    event = json.loads(p.encode_notification(NOTIFICATIONS[5][1]))
    assert event == {
        "jsonrpc": "2.0",
        "method": "process/exited",
        "params": {
            "processId": "a",
            "seq": 5,
            "exitCode": 137,
            "signal": "SIGKILL",
            "timedOut": True,
            "sandboxDenied": True,
            "durationMs": 12.345,
            "usage": {"userCpuMs": 1.5, "systemCpuMs": 0.25, "maxRssKb": 2048},
            "denials": [
                {"blocker": "fs.make_reg", "target": "/etc/x"},
                {"blocker": "net.connect", "target": "1.2.3.4:80"},
            ],
            "sandboxDeniedSource": "audit",
            "limitExceeded": None,
        },
    }


def test_output_is_binary_safe_base64() -> None:
    text = p.encode_notification(p.OutputEvent(process_id="a", seq=1, stream=p.Stream.STDOUT, chunk=b"\x00\xff\n\r"))
    assert json.loads(text)["params"]["chunk"] == "AP8KDQ=="
    decoded = p.decode(text)
    assert isinstance(decoded, p.Notification)
    assert decoded.params.chunk == b"\x00\xff\n\r"



@pytest.mark.parametrize("chunk", ["AAAA=", "AAAA==", "YWJj==", "AP8KDQ==", ""])
def test_base64_accepted_as_the_standard_decoder_does(chunk: str) -> None:
    """The fast decoder refuses excess padding; the standard one (the reference) accepts it."""
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "process/write", "params": {"processId": "a", "chunk": chunk}})
    decoded = p.decode(text)
    assert isinstance(decoded, p.Request)
    assert decoded.params.chunk == base64.b64decode(chunk, validate=True)


# --- defaults and optional members ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        (
            "initialize",
            {"clientName": "c", "protocolVersion": 1},
            p.InitializeParams(client_name="c", protocol_version=1, delivery=p.Delivery.BEST_EFFORT, binary_output=False),
        ),
        (
            "process/start",
            {"processId": "a", "argv": ["ls"]},
            p.StartParams(process_id="a", argv=("ls",), cwd=None, env=None, inherit_env=True, pipe_stdin=False, timeout_ms=None),
        ),
        (
            "process/start",
            {"processId": "a", "argv": ["ls"], "cwd": None, "env": None, "timeoutMs": None, "sandbox": None},
            p.StartParams(process_id="a", argv=("ls",)),
        ),
        (
            "process/start",
            {"processId": "a", "argv": ["ls"], "sandbox": {"mode": "readOnly"}},
            p.StartParams(
                process_id="a", argv=("ls",), sandbox=p.SandboxPolicy(mode=p.SandboxMode.READ_ONLY, writable_roots=(), network=False)
            ),
        ),
        ("process/read", {"processId": "a"}, p.ReadParams(process_id="a", after_seq=0, max_bytes=None, wait_ms=0)),
        ("process/write", {"processId": "a"}, p.WriteParams(process_id="a", chunk=b"", write_id=None, eof=False)),
        ("process/write", {"processId": "a", "eof": True}, p.WriteParams(process_id="a", eof=True)),
        ("process/terminate", {"processId": "a"}, p.TerminateParams(process_id="a", grace_ms=2000)),
        ("process/list", {}, p.EmptyParams()),
    ],
)
def test_defaults_of_omitted_params(method: str, params: dict[str, Any], expected: Any) -> None:
    assert p.decode(request_text(method, params)) == p.Request(7, method, expected)


@pytest.mark.parametrize("params", [None, "absent"])
def test_params_may_be_omitted_or_null_for_parameterless_methods(params: Any) -> None:
    envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "process/list"}
    if params != "absent":
        envelope["params"] = params
    assert p.decode(json.dumps(envelope)) == p.Request(1, "process/list", p.EmptyParams())
    notification = {key: value for key, value in envelope.items() if key != "id"} | {"method": "initialized"}
    assert p.decode(json.dumps(notification)) == p.Notification("initialized", p.InitializedParams())


def test_legacy_exited_without_sandbox_denied_decodes_as_none() -> None:
    """A server that follows only the base protocol's older shape still decodes (docs §9)."""
    text = json.dumps(
        {"method": "process/exited", "params": {"processId": "a", "seq": 2, "exitCode": 0, "signal": None, "timedOut": False}}
    )
    message = p.decode(text)
    assert isinstance(message, p.Notification)
    assert message.params == p.ExitedEvent(process_id="a", seq=2, exit_code=0, signal=None, timed_out=False)
    assert message.params.sandbox_denied is None
    assert message.params.denials == ()


def test_read_result_without_our_extensions_decodes_with_defaults() -> None:
    raw = {
        "chunks": [{"seq": 1, "stream": "stdout", "chunk": "aGk="}],
        "nextSeq": 2,
        "retainedFromSeq": 1,
        "exited": False,
        "exitCode": None,
        "signal": None,
        "timedOut": False,
        "sandboxDenied": None,
        "closed": False,
    }
    result = p.decode_result("process/read", raw)
    assert result.chunks == (p.OutputChunk(seq=1, stream=p.Stream.STDOUT, chunk=b"hi"),)
    assert (result.last_seq, result.duration_ms, result.usage, result.evicted_bytes) == (None, None, None, None)
    assert (result.denials, result.sandbox_denied_source, result.failure) == ((), None, None)


def test_initialize_result_without_binary_output_or_resumed() -> None:
    raw = json.loads(p.encode_result(1, RESULTS[0][1]))["result"]
    del raw["resumed"]
    del raw["capabilities"]["binaryOutput"]
    result = p.decode_result("initialize", raw)
    assert result.resumed is False
    assert result.capabilities.binary_output is False


# --- the "jsonrpc" member is optional (Codex omits it) --------------------------------------


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"id": 1, "method": "process/list", "params": {}}, p.Request(1, "process/list", p.EmptyParams())),
        (
            {"method": "process/closed", "params": {"processId": "a", "seq": 9}},
            p.Notification("process/closed", p.ClosedEvent(process_id="a", seq=9)),
        ),
        ({"id": "x", "result": {"running": True}}, p.Response("x", {"running": True})),
        ({"id": 2, "error": {"code": -32001, "message": "unknown process"}}, p.ErrorResponse(2, -32001, "unknown process")),
    ],
)
def test_messages_without_jsonrpc_member_are_accepted(envelope: dict[str, Any], expected: p.Message) -> None:
    assert p.decode(json.dumps(envelope)) == expected
    assert p.decode(json.dumps({"jsonrpc": "2.0", **envelope})) == expected


def test_bytes_input_is_decoded_as_utf8_json() -> None:
    text = request_text("process/start", {"processId": "a", "argv": ["echo", "ü"]})
    assert p.decode(text.encode("utf-8")) == p.decode(text)


# --- responses and error responses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"jsonrpc": "2.0", "id": 5, "result": {}}, p.Response(5, {})),
        ({"jsonrpc": "2.0", "id": 5, "result": None}, p.Response(5, None)),
        ({"jsonrpc": "2.0", "id": "s", "result": [1, "x"]}, p.Response("s", [1, "x"])),
        (
            {"jsonrpc": "2.0", "id": 5, "error": {"code": -32007, "message": "spawn failed", "data": {"errno": "ENOENT", "strerror": "No such file or directory"}}},
            p.ErrorResponse(5, -32007, "spawn failed", {"errno": "ENOENT", "strerror": "No such file or directory"}),
        ),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}, p.ErrorResponse(None, -32700, "parse error")),
        ({"jsonrpc": "2.0", "error": {"code": -32600, "message": "m"}}, p.ErrorResponse(None, -32600, "m")),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "", "data": [1]}}, p.ErrorResponse(1, 1, "", [1])),
    ],
)
def test_responses_decode(envelope: dict[str, Any], expected: p.Message) -> None:
    assert p.decode(json.dumps(envelope)) == expected


@pytest.mark.parametrize(
    "error",
    [
        p.ProtocolError(p.ErrorCode.UNKNOWN_PROCESS, "unknown process 'a'", request_id=3),
        p.ProtocolError(p.ErrorCode.PARSE_ERROR, "parse error: not valid JSON"),
        p.ProtocolError(p.ErrorCode.INVALID_PARAMS, "invalid params: x @ $.params.a", {"errors": ["x @ $.params.a"]}, request_id="q"),
        p.ProtocolError(p.ErrorCode.SPAWN_FAILED, "spawn failed", {"errno": "ENOENT", "strerror": "No such file"}, request_id=0),
    ],
)
def test_encode_error_round_trip(error: p.ProtocolError) -> None:
    text = p.encode_error(error)
    envelope = json.loads(text)
    assert envelope["id"] == error.request_id  # null when the id could not be recovered
    assert ("data" in envelope["error"]) == (error.data is not None)
    decoded = p.decode(text)
    assert decoded == p.ErrorResponse(error.request_id, error.code, error.message, error.data)
    assert p.decode(p.encode(decoded)) == decoded


def test_error_codes_match_the_contract() -> None:
    assert {code.name: int(code) for code in p.ErrorCode} == {
        "PARSE_ERROR": -32700,
        "INVALID_REQUEST": -32600,
        "METHOD_NOT_FOUND": -32601,
        "INVALID_PARAMS": -32602,
        "INTERNAL_ERROR": -32603,
        "UNKNOWN_PROCESS": -32001,
        "DUPLICATE_PROCESS": -32002,
        "PROCESS_RELEASED": -32003,
        "SHUTTING_DOWN": -32004,
        "LIMIT_EXCEEDED": -32005,
        "SANDBOX_UNAVAILABLE": -32006,
        "SPAWN_FAILED": -32007,
        "NOT_TERMINAL": -32008,
        # fs/* (docs/protocol.md §13), beyond the contract.
        "FILE_NOT_FOUND": -32009,
        "FILE_FAILED": -32010,
    }


# --- -32700: not JSON -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "{",
        '{"id":1,"method":"process/list"',
        "{'id': 1}",
        '{"id":1,}',
        "nul",
        '{"id":1}{"id":2}',
        b"\xff\xfe\xfd",
        b'{"id":1,"method":"\xc3"}',
        '{"id":' + "9" * 5000 + "}",
        "[" * 64 + "]" * 63,  # within the depth bound: the parse finds the missing bracket
    ],
    ids=lambda text: repr(text[:24]),
)
def test_bad_json_is_a_parse_error(text: str | bytes) -> None:
    error = decode_error(text)
    assert error.code == p.ErrorCode.PARSE_ERROR
    assert error.request_id is None


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[" * 65 + "]" * 65,
        b"[" * 65 + b"]" * 65,
        "[" + "[],"  * 40 + "[" * 70 + "{}" + "]" * 70 + "]",  # wide, and deep in one element
        "[" + "{}," * 300_000 + "{}]",
        b"[" + b"1," * 300_000 + b"1]",
    ],
    ids=lambda text: repr(text[:24]) + f"…{len(text)}",
)
def test_too_deep_or_too_many_values_is_refused_before_the_parse(text: str | bytes) -> None:
    error = decode_error(text)
    assert error.code == p.ErrorCode.LIMIT_EXCEEDED, error
    assert error.request_id is None


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "process/start",
                    "params": {"processId": "p", "argv": ["sh", "-c", "[" * 200 + "," * 300_000]}}),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "process/start",
                    "params": {"processId": "p", "argv": ["echo", '\\"[[[' * 100]}}),
    ],
    ids=["brackets and commas in a string", "escaped quotes and brackets"],
)  # fmt: skip
def test_brackets_and_commas_inside_strings_do_not_count(text: str) -> None:
    assert isinstance(p.decode(text), p.Request)


# --- -32600: not a valid envelope ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "request_id"),
    [
        ([], None),
        ([{"id": 1, "method": "process/list"}], None),  # batches are not part of the protocol
        ("process/list", None),
        (1, None),
        (None, None),
        (True, None),
        ({}, None),
        ({"id": 1.5, "method": "process/list"}, None),
        ({"id": True, "method": "process/list"}, None),
        ({"id": [1], "method": "process/list"}, None),
        ({"id": {"n": 1}, "method": "process/list"}, None),
        ({"jsonrpc": "1.0", "id": 1, "method": "process/list"}, 1),
        ({"jsonrpc": 2.0, "id": "a", "method": "process/list"}, "a"),
        ({"jsonrpc": None, "id": 1, "method": "process/list"}, 1),
        ({"id": 1, "method": 5}, 1),
        ({"id": 1, "method": None}, 1),
        ({"id": 1, "method": "process/list", "extra": True}, 1),
        ({"id": 1, "method": "process/list", "result": {}}, 1),
        ({"id": 1, "result": {}, "error": {"code": 1, "message": "m"}}, 1),
        ({"id": 1}, 1),
        ({"id": 1, "result": {}, "extra": 1}, 1),
        ({"result": {}}, None),
        ({"id": None, "result": {}}, None),
        ({"id": 1, "error": "boom"}, 1),
        ({"id": 1, "error": {"code": -1}}, 1),
        ({"id": 1, "error": {"code": -1, "message": 5}}, 1),
        ({"id": 1, "error": {"code": "x", "message": "m"}}, 1),
        ({"id": 1, "error": {"code": True, "message": "m"}}, 1),
        ({"id": 1, "error": {"code": 1.5, "message": "m"}}, 1),
    ],
)
def test_bad_envelope_is_an_invalid_request(envelope: Any, request_id: p.RequestId | None) -> None:
    error = decode_error(json.dumps(envelope))
    assert error.code == p.ErrorCode.INVALID_REQUEST, error
    assert error.request_id == request_id


# --- -32601: unknown method, id preserved -----------------------------------------------------------


@pytest.mark.parametrize("request_id", [1, 0, "abc", ""])
@pytest.mark.parametrize(
    "method",
    ["process/frobnicate", "", "Process/Start", "process/start ", "initialized", "process/output", "process/exited", "process/closed"],
)
def test_unknown_method_keeps_the_request_id(method: str, request_id: p.RequestId) -> None:
    error = decode_error(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}}))
    assert error.code == p.ErrorCode.METHOD_NOT_FOUND
    assert error.request_id == request_id
    assert not error.from_notification
    assert method in error.message
    # And the error it encodes to answers the same id.
    assert json.loads(p.encode_error(error))["id"] == request_id


@pytest.mark.parametrize("method", ["process/frobnicate", "process/start", "initialize", "process/list"])
def test_unknown_notification_is_method_not_found_without_id(method: str) -> None:
    error = decode_error(json.dumps({"jsonrpc": "2.0", "method": method, "params": {}}))
    assert error.code == p.ErrorCode.METHOD_NOT_FOUND
    assert error.request_id is None
    assert error.from_notification  # JSON-RPC: the server must not answer it at all


# --- -32602: the strict converter -------------------------------------------------------------------

START_OK: Final = {"processId": "a", "argv": ["ls"]}

# (method, params, the exact data.errors)
INVALID_PARAMS: Final[list[tuple[str, Any, list[str]]]] = [
    # no tuple of characters from a string, for every list field
    ("process/start", {**START_OK, "argv": "abc"}, ["expected a list, got str @ $.params.argv"]),
    (
        "process/start",
        {**START_OK, "sandbox": {"mode": "workspaceWrite", "writableRoots": "/tmp"}},
        ["expected a list, got str @ $.params.sandbox.writableRoots"],
    ),
    ("process/start", {**START_OK, "argv": {"0": "ls"}}, ["expected a list, got dict @ $.params.argv"]),
    # no int from a float, however integral
    ("process/start", {**START_OK, "timeoutMs": 1.9}, ["expected an integer, got float @ $.params.timeoutMs"]),
    ("process/read", {"processId": "a", "afterSeq": 2.0}, ["expected an integer, got float @ $.params.afterSeq"]),
    ("initialize", {"clientName": "c", "protocolVersion": 1.0}, ["expected an integer, got float @ $.params.protocolVersion"]),
    # no int from a bool (bool is an int subclass in Python)
    ("process/read", {"processId": "a", "afterSeq": True}, ["expected an integer, got bool @ $.params.afterSeq"]),
    ("process/read", {"processId": "a", "maxBytes": False}, ["expected an integer, got bool @ $.params.maxBytes"]),
    ("process/terminate", {"processId": "a", "graceMs": True}, ["expected an integer, got bool @ $.params.graceMs"]),
    # no int or string from a string or int
    ("process/read", {"processId": "a", "waitMs": "10"}, ["expected an integer, got str @ $.params.waitMs"]),
    ("initialize", {"clientName": 5, "protocolVersion": 1}, ["expected a string, got int @ $.params.clientName"]),
    ("process/read", {"processId": 12, "afterSeq": 0}, ["expected a string, got int @ $.params.processId"]),
    ("process/write", {"processId": "a", "writeId": 5}, ["expected a string, got int @ $.params.writeId"]),
    ("process/start", {**START_OK, "cwd": 0}, ["expected a string, got int @ $.params.cwd"]),
    # no bool from anything but a bool
    ("process/write", {"processId": "a", "eof": 1}, ["expected a boolean, got int @ $.params.eof"]),
    ("process/start", {**START_OK, "inheritEnv": "true"}, ["expected a boolean, got str @ $.params.inheritEnv"]),
    ("process/start", {**START_OK, "pipeStdin": None}, ["expected a boolean, got NoneType @ $.params.pipeStdin"]),
    ("initialize", {"clientName": "c", "protocolVersion": 1, "binaryOutput": 0}, ["expected a boolean, got int @ $.params.binaryOutput"]),
    # list items, with their index
    ("process/start", {**START_OK, "argv": ["ls", 5]}, ["expected a string, got int @ $.params.argv[1]"]),
    (
        "process/start",
        {**START_OK, "argv": [None, "x", 1.5]},
        ["expected a string, got NoneType @ $.params.argv[0]", "expected a string, got float @ $.params.argv[2]"],
    ),
    (
        "process/start",
        {**START_OK, "sandbox": {"mode": "readOnly", "writableRoots": ["/ok", 1]}},
        ["expected a string, got int @ $.params.sandbox.writableRoots[1]"],
    ),
    # semantic rules of nested objects
    (
        "process/start",
        {**START_OK, "sandbox": {"mode": "workspaceWrite", "writableRoots": ["/ok", "relative/dir"]}},
        ["must be absolute paths, got 'relative/dir' @ $.params.sandbox.writableRoots"],
    ),
    ("process/start", {**START_OK, "sandbox": {}}, ["required field missing @ $.params.sandbox.mode"]),
    ("process/start", {**START_OK, "sandbox": "readOnly"}, ["expected an object, got str @ $.params.sandbox"]),
    (
        "process/start",
        {**START_OK, "sandbox": {"mode": "none", "network": "no"}},
        ["expected a boolean, got str @ $.params.sandbox.network"],
    ),
    # base64
    ("process/write", {"processId": "a", "chunk": "abc"}, ["invalid base64 @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": "YQ"}, ["invalid base64 @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": "YW Jj"}, ["invalid base64 @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": "YWJj\n"}, ["invalid base64 @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": "_-__"}, ["invalid base64 @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": "éé=="}, ["invalid base64 @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": [104, 105]}, ["expected a base64 string, got list @ $.params.chunk"]),
    ("process/write", {"processId": "a", "chunk": None}, ["expected a base64 string, got NoneType @ $.params.chunk"]),
    # enums
    (
        "process/signal",
        {"processId": "a", "signal": "usr1"},
        ["expected one of 'interrupt', 'terminate', 'kill', 'hangup', got 'usr1' @ $.params.signal"],
    ),
    (
        "process/signal",
        {"processId": "a", "signal": "KILL"},
        ["expected one of 'interrupt', 'terminate', 'kill', 'hangup', got 'KILL' @ $.params.signal"],
    ),
    ("process/signal", {"processId": "a", "signal": 9}, ["expected a string, got int @ $.params.signal"]),
    (
        "initialize",
        {"clientName": "c", "protocolVersion": 1, "delivery": "BEST_EFFORT"},
        ["expected one of 'bestEffort', 'lossless', got 'BEST_EFFORT' @ $.params.delivery"],
    ),
    (
        "process/start",
        {**START_OK, "sandbox": {"mode": "full"}},
        ["expected one of 'none', 'readOnly', 'workspaceWrite', got 'full' @ $.params.sandbox.mode"],
    ),
    # unknown / extra fields, at the top and nested, under their wire spelling
    ("process/start", {**START_OK, "processID": "b"}, ["unknown field @ $.params.processID"]),
    ("process/start", {**START_OK, "process_id": "b"}, ["unknown field @ $.params.process_id"]),
    ("process/read", {"processId": "a", "after_seq": 3}, ["unknown field @ $.params.after_seq"]),
    (
        "process/start",
        {**START_OK, "sandbox": {"mode": "none", "allowNetwork": True}},
        ["unknown field @ $.params.sandbox.allowNetwork"],
    ),
    ("process/list", {"all": True}, ["unknown field @ $.params.all"]),
    ("process/release", {"processId": "a", "force": True}, ["unknown field @ $.params.force"]),
    ("process/resize", {"processId": "a", "rows": 0, "cols": 80}, ["must be between 1 and 10000 @ $.params.rows"]),
    # missing fields (all of them are reported)
    ("process/start", {"argv": ["ls"]}, ["required field missing @ $.params.processId"]),
    (
        "process/start",
        {},
        ["required field missing @ $.params.processId", "required field missing @ $.params.argv"],
    ),
    (
        "initialize",
        {},
        ["required field missing @ $.params.clientName", "required field missing @ $.params.protocolVersion"],
    ),
    ("process/signal", {"processId": "a"}, ["required field missing @ $.params.signal"]),
    ("process/read", {"afterSeq": 1}, ["required field missing @ $.params.processId"]),
    # required non-nullable fields refuse null
    ("initialize", {"clientName": None, "protocolVersion": 1}, ["expected a string, got NoneType @ $.params.clientName"]),
    ("process/read", {"processId": "a", "afterSeq": None}, ["expected an integer, got NoneType @ $.params.afterSeq"]),
    # several problems in one message are all listed
    (
        "process/start",
        {"processId": 1, "argv": ["ls", 2], "cwd": 3, "zzz": 4},
        [
            "expected a string, got int @ $.params.processId",
            "expected a string, got int @ $.params.argv[1]",
            "expected a string, got int @ $.params.cwd",
            "unknown field @ $.params.zzz",
        ],
    ),
    # params that are not an object
    ("process/start", ["a", ["ls"]], ["expected an object, got list @ $.params"]),
    ("process/list", [], ["expected an object, got list @ $.params"]),
    ("process/read", "a", ["expected an object, got str @ $.params"]),
    ("process/read", 3, ["expected an object, got int @ $.params"]),
]


@pytest.mark.parametrize(("method", "params", "expected"), INVALID_PARAMS, ids=[f"{m}-{i}" for i, (m, _p, _e) in enumerate(INVALID_PARAMS)])
def test_invalid_params_name_every_problem_with_its_path(method: str, params: Any, expected: list[str]) -> None:
    errors = params_errors(method, params)
    assert sorted(errors) == sorted(expected)


@pytest.mark.parametrize(("method", "params", "expected"), INVALID_PARAMS, ids=[f"{m}-{i}" for i, (m, _p, _e) in enumerate(INVALID_PARAMS)])
def test_invalid_params_lines_have_the_documented_form(method: str, params: Any, expected: list[str]) -> None:
    for line in params_errors(method, params, request_id="s-1"):
        if line.startswith("unknown field @ "):
            continue  # the path ends in the client's own (possibly snake_case) spelling
        assert ERROR_LINE_RE.match(line), line
        assert "_" not in line.partition(" @ ")[2], f"paths use wire (camelCase) names: {line}"


def test_invalid_params_in_a_notification_has_no_id() -> None:
    error = decode_error(json.dumps({"method": "process/output", "params": {"processId": "a", "seq": "1", "stream": "stdout", "chunk": ""}}))
    assert error.code == p.ErrorCode.INVALID_PARAMS
    assert error.request_id is None
    assert error.from_notification
    assert error.data == {"errors": ["expected an integer, got str @ $.params.seq"]}


# --- semantic field rules ----------------------------------------------------------------------------

VALID_PROCESS_IDS: Final = ["a", "Z", "0", "build-1:step.2_x", "...", "a" * 128, "A-Z_a-z.0-9:-", "-"]
INVALID_PROCESS_IDS: Final = [
    "",
    "a" * 129,
    "a b",
    "a/b",
    "a\n",
    "\na",
    "a\0",
    "é",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to \d, not to [0-9]
    "ａ",  # FULLWIDTH LATIN SMALL LETTER A
    "a+b",
    "a*",
    "$(x)",
]
PROCESS_ID_METHODS: Final = [
    ("process/start", {"argv": ["ls"]}),
    ("process/read", {}),
    ("process/write", {}),
    ("process/signal", {"signal": "kill"}),
    ("process/terminate", {}),
    ("process/release", {}),
]


@pytest.mark.parametrize(("method", "rest"), PROCESS_ID_METHODS, ids=[m for m, _r in PROCESS_ID_METHODS])
@pytest.mark.parametrize("process_id", VALID_PROCESS_IDS)
def test_valid_process_ids(method: str, rest: dict[str, Any], process_id: str) -> None:
    message = p.decode(request_text(method, {"processId": process_id, **rest}))
    assert isinstance(message, p.Request)
    assert message.params.process_id == process_id


@pytest.mark.parametrize(("method", "rest"), PROCESS_ID_METHODS, ids=[m for m, _r in PROCESS_ID_METHODS])
@pytest.mark.parametrize("process_id", INVALID_PROCESS_IDS, ids=ascii)
def test_invalid_process_ids(method: str, rest: dict[str, Any], process_id: str) -> None:
    assert params_errors(method, {"processId": process_id, **rest}) == [
        "processId must be 1-128 characters of [A-Za-z0-9._:-] @ $.params.processId"
    ]


def test_process_id_rules_hold_for_objects_built_in_code() -> None:
    """A message object that exists is a valid one: the rules are attrs validators."""
    with pytest.raises(ValueError):
        p.ReadParams(process_id="a b")
    with pytest.raises(ValueError):
        p.StartParams(process_id="a", argv=())
    with pytest.raises(ValueError):
        p.StartParams(process_id="a", argv=("ls",), cwd="with\0nul")


@pytest.mark.parametrize("cwd", ["/", "/tmp", "/tmp/../x", "//host", "/with space/ü"])
def test_absolute_cwd_is_accepted(cwd: str) -> None:
    message = p.decode(request_text("process/start", {**START_OK, "cwd": cwd}))
    assert isinstance(message, p.Request)
    assert message.params.cwd == cwd


@pytest.mark.parametrize("cwd", [".", "tmp", "./tmp", "../tmp", "~/x"], ids=ascii)
def test_relative_cwd_is_passed_on_for_the_server_to_resolve(cwd: str) -> None:
    message = p.decode(request_text("process/start", {**START_OK, "cwd": cwd}))
    assert isinstance(message, p.Request)
    assert message.params.cwd == cwd


@pytest.mark.parametrize("cwd", ["", "/tmp\0x", "x\0"], ids=ascii)
def test_empty_or_nul_cwd_is_rejected(cwd: str) -> None:
    assert params_errors("process/start", {**START_OK, "cwd": cwd}) == ["must be a non-empty path without NUL @ $.params.cwd"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "argv must be a non-empty list @ $.params.argv"),
        ([""], "argv[0] must not be empty @ $.params.argv"),
        (["", "x"], "argv[0] must not be empty @ $.params.argv"),
        (["ls", "a\0b"], "argv must not contain NUL characters @ $.params.argv"),
        (["\0"], "argv must not contain NUL characters @ $.params.argv"),
    ],
    ids=ascii,
)
def test_argv_rules(argv: list[str], expected: str) -> None:
    assert params_errors("process/start", {"processId": "a", "argv": argv}) == [expected]


@pytest.mark.parametrize("argv", [["ls"], ["ls", ""], ["/bin/sh", "-c", "exit 0"], ["x"] * 1000])
def test_argv_accepted(argv: list[str]) -> None:
    message = p.decode(request_text("process/start", {"processId": "a", "argv": argv}))
    assert isinstance(message, p.Request)
    assert message.params.argv == tuple(argv)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"": "x"}, "invalid environment variable '' @ $.params.env"),
        ({"A=B": "x"}, "invalid environment variable 'A=B' @ $.params.env"),
        ({"A\0": "x"}, "invalid environment variable 'A\\x00' @ $.params.env"),
        ({"A": "x\0y"}, "invalid environment variable 'A' @ $.params.env"),
        ({"A": 1}, "expected a string, got int @ $.params.env"),
        ({"A": None}, "expected a string, got NoneType @ $.params.env"),
        (["A=1"], "expected an object, got list @ $.params.env"),
    ],
    ids=ascii,
)
def test_env_rules(env: Any, expected: str) -> None:
    assert params_errors("process/start", {**START_OK, "env": env}) == [expected]


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("process/read", {"processId": "a", "afterSeq": -1}, "must be >= 0 @ $.params.afterSeq"),
        ("process/read", {"processId": "a", "maxBytes": 0}, "must be > 0 @ $.params.maxBytes"),
        ("process/read", {"processId": "a", "maxBytes": -5}, "must be > 0 @ $.params.maxBytes"),
        ("process/read", {"processId": "a", "waitMs": -1}, "must be between 0 and 604800000 @ $.params.waitMs"),
        ("process/read", {"processId": "a", "waitMs": 604_800_001}, "must be between 0 and 604800000 @ $.params.waitMs"),
        ("process/start", {**START_OK, "timeoutMs": -1}, "must be between 0 and 604800000 @ $.params.timeoutMs"),
        ("process/start", {**START_OK, "retainBytes": 0}, "must be > 0 @ $.params.retainBytes"),
        ("process/start", {**START_OK, "retainAfterCloseMs": -1}, "must be between 0 and 604800000 @ $.params.retainAfterCloseMs"),
        ("process/terminate", {"processId": "a", "graceMs": 10**10}, "must be between 0 and 604800000 @ $.params.graceMs"),
        ("process/read", {"processId": "a", "afterSeq": 2**63}, "integer out of range @ $.params.afterSeq"),
        ("process/read", {"processId": "a", "afterSeq": -(2**63) - 1}, "integer out of range @ $.params.afterSeq"),
    ],
)
def test_numeric_ranges(method: str, params: dict[str, Any], expected: str) -> None:
    assert params_errors(method, params) == [expected]


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ({"processId": "a", "waitMs": 604_800_000}, "wait_ms", 604_800_000),
        ({"processId": "a", "afterSeq": 2**63 - 1}, "after_seq", 2**63 - 1),
        ({"processId": "a", "maxBytes": 1}, "max_bytes", 1),
    ],
)
def test_numeric_bounds_are_inclusive(params: dict[str, Any], field: str, value: int) -> None:
    message = p.decode(request_text("process/read", params))
    assert isinstance(message, p.Request)
    assert getattr(message.params, field) == value


# --- results are held to the same rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "raw", "expected"),
    [
        (
            "process/read",
            {**json.loads(p.encode_result(1, MINIMAL_READ))["result"], "chunks": [{"seq": 1, "stream": "stdin", "chunk": "!"}]},
            [
                "expected one of 'stdout', 'stderr', 'pty', got 'stdin' @ $.result.chunks[0].stream",
                "invalid base64 @ $.result.chunks[0].chunk",
            ],
        ),
        (
            "process/read",
            {**json.loads(p.encode_result(1, MINIMAL_READ))["result"], "chunks": [{"seq": 0, "stream": "stdout", "chunk": ""}]},
            ["must be > 0 @ $.result.chunks[0].seq"],
        ),
        (
            "process/read",
            {k: v for k, v in json.loads(p.encode_result(1, MINIMAL_READ))["result"].items() if k != "nextSeq"},
            ["required field missing @ $.result.nextSeq"],
        ),
        (
            "process/read",
            {**json.loads(p.encode_result(1, MINIMAL_READ))["result"], "evictedBytes": {"stdout": 1, "stdin": 2}},
            ["unknown field @ $.result.evictedBytes.stdin"],
        ),
        ("process/start", {"processId": "a", "pid": "12", "sandboxType": "none"}, ["expected an integer, got str @ $.result.pid"]),
        ("process/write", {"status": "ok"}, ["expected one of 'accepted', 'stdinClosed', 'unknownProcess', got 'ok' @ $.result.status"]),
        ("process/release", {"released": True}, ["unknown field @ $.result.released"]),
        ("process/release", None, ["expected an object, got NoneType @ $.result"]),
        (
            "process/list",
            {"processes": [{"processId": "a", "pid": 1, "argv": "ls", "state": "zombie", "nextSeq": 1}]},
            [
                "expected a list, got str @ $.result.processes[0].argv",
                "expected one of 'running', 'exited', 'closed', got 'zombie' @ $.result.processes[0].state",
            ],
        ),
    ],
)
def test_decode_result_rejects_malformed_results(method: str, raw: Any, expected: list[str]) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_result(method, raw, tolerant=False)
    assert info.value.code == p.ErrorCode.INVALID_PARAMS
    assert info.value.data is not None
    assert sorted(info.value.data["errors"]) == sorted(expected)


# --- regressions: codec defects found by these tests and fixed ---------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"id":"\\ud800","method":"nope"}',  # the id is echoed on the -32601 answer
        '{"id":1,"method":"\\udfff"}',  # method name echoed in the -32601 message
    ],
)
def test_every_error_encodes_to_valid_utf8(text: str) -> None:
    error = decode_error(text)
    p.encode_error(error).encode("utf-8")


def test_call_with_null_id_is_an_invalid_request() -> None:
    error = decode_error('{"jsonrpc":"2.0","id":null,"method":"process/list","params":{}}')
    assert error.code == p.ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_tokens_are_parse_errors(token: str) -> None:
    error = decode_error('{"id":1,"result":{"durationMs":' + token + "}}")
    assert error.code == p.ErrorCode.PARSE_ERROR


def test_every_encoded_message_is_ascii_json() -> None:
    """Non-ASCII text leaves as \\u escapes, so any transport can write it as UTF-8."""
    text = p.encode_request(1, FULL_START)
    assert text.isascii()
    assert p.decode(text) == p.Request(1, "process/start", FULL_START)


@pytest.mark.parametrize("method", ["initialized", "process/list", "process/bogus"])
def test_null_id_on_any_call_is_an_invalid_request(method: str) -> None:
    error = decode_error(json.dumps({"id": None, "method": method, "params": {}}))
    assert error.code == p.ErrorCode.INVALID_REQUEST
    assert error.request_id is None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_encode_refuses_non_json_numbers(value: float) -> None:
    # Either fix passes: refusing at encode (allow_nan=False) or at construction (a validator).
    with pytest.raises(ValueError):
        p.encode_result(1, attrs.evolve(MINIMAL_READ, duration_ms=value))


# --- a client is tolerant of a newer (or older) server -----------------------------------------------


def test_results_from_a_server_ignore_unknown_fields_by_default() -> None:
    raw = {**json.loads(p.encode_result(1, MINIMAL_READ))["result"], "fromTheFuture": 1}
    assert p.decode_result("process/read", raw) == MINIMAL_READ
    with pytest.raises(p.ProtocolError):
        p.decode_result("process/read", raw, tolerant=False)


def test_a_legacy_read_result_without_the_newer_fields_decodes() -> None:
    legacy = {"chunks": [], "nextSeq": 3, "exited": True, "exitCode": 0, "closed": True}
    result = p.decode_result("process/read", legacy)
    assert (result.sandbox_denied, result.retained_from_seq, result.signal, result.timed_out) == (None, 1, None, False)


def test_tolerant_decode_ignores_unknown_event_fields_but_keeps_types_strict() -> None:
    event = '{"method":"process/closed","params":{"processId":"a","seq":2,"fromTheFuture":true}}'
    assert p.decode(event, tolerant=True) == p.Notification("process/closed", p.ClosedEvent(process_id="a", seq=2))
    assert decode_error(event).code == p.ErrorCode.INVALID_PARAMS
    with pytest.raises(p.ProtocolError):
        p.decode('{"method":"process/closed","params":{"processId":"a","seq":"2"}}', tolerant=True)


def test_a_client_reading_its_server_is_not_held_to_the_servers_bounds() -> None:
    # A read answer of many one-byte chunks (a progress bar's output) has more values than
    # a server accepts from a client; the client decodes it whole.
    chunks = [{"seq": seq, "stream": "stdout", "chunk": "YQ=="} for seq in range(1, 70_000)]
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"chunks": chunks, "nextSeq": 70_000, "exited": False, "closed": False}})
    with pytest.raises(p.ProtocolError) as refused:
        p.decode(text)
    assert refused.value.code == p.ErrorCode.LIMIT_EXCEEDED
    response = p.decode(text, tolerant=True)
    assert isinstance(response, p.Response)
    assert len(p.decode_result("process/read", response.result).chunks) == 69_999
