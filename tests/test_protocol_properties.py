"""Properties of the codec, checked with hypothesis.

(a) every valid message object survives encode -> decode unchanged;
(b) decoding anything at all -- arbitrary JSON, text or bytes -- yields a message or raises
    ``ProtocolError``, never another exception, and an accepted message re-encodes to itself;
(c) any JSON object given as the params of any method is either a valid typed params object
    or a -32602 whose ``data.errors`` point into ``$.params``.

Deterministic (derandomized, no example database) and bounded so the suite stays fast.
"""

from __future__ import annotations

import json
import string
from typing import Any, Final

import attrs
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import protocol as p
from protocol._codec import wire_name

MAX_MS: Final = 7 * 24 * 3600 * 1000
INT64: Final = st.integers(-(2**63), 2**63 - 1)
NON_NEGATIVE: Final = st.integers(0, 2**63 - 1)
POSITIVE: Final = st.integers(1, 2**63 - 1)
MILLISECONDS: Final = st.integers(0, MAX_MS)

# derandomize: the same examples on every run and every machine; database=None: nothing
# written into the checkout. No explain phase: it imports libcst (deprecation warnings are
# errors here), writes .hypothesis/patches, and turns a failing run into minutes.
FAST: Final = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
THOROUGH: Final = settings(FAST, max_examples=150)

# --- value strategies -------------------------------------------------------------------------

texts = st.text(max_size=12)
no_nul_texts = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=12)
PROCESS_ID_ALPHABET: Final = string.ascii_letters + string.digits + "._:-"
process_ids = st.text(alphabet=PROCESS_ID_ALPHABET, min_size=1, max_size=128)
absolute_paths = no_nul_texts.map(lambda tail: "/" + tail)
argvs = st.builds(
    lambda program, args: (program, *args),
    st.text(alphabet=st.characters(blacklist_characters="\x00"), min_size=1, max_size=12),
    st.lists(no_nul_texts, max_size=4),
)
env_keys = st.text(alphabet=st.characters(blacklist_characters="=\x00"), min_size=1, max_size=8)
envs = st.none() | st.dictionaries(env_keys, no_nul_texts, max_size=4)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
chunks = st.binary(max_size=64)
request_ids = INT64 | texts

json_values = st.recursive(
    st.none() | st.booleans() | INT64 | finite_floats | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


# --- message strategies (st.builds over the attrs classes) -------------------------------------

usages = st.builds(p.Usage, user_cpu_ms=finite_floats, system_cpu_ms=finite_floats, max_rss_kb=INT64)
denials = st.lists(st.builds(p.Denial, blocker=texts, target=texts), max_size=3).map(tuple)
sandbox_policies = st.builds(
    p.SandboxPolicy,
    mode=st.sampled_from(p.SandboxMode),
    writable_roots=st.lists(absolute_paths, max_size=3).map(tuple),
    network=st.booleans(),
)
DIMENSIONS: Final = st.integers(1, p.MAX_TERMINAL_DIMENSION)

PARAMS: Final[dict[str, st.SearchStrategy[Any]]] = {
    "initialize": st.builds(
        p.InitializeParams,
        client_name=texts,
        protocol_version=INT64,
        client_version=maybe(texts),
        resume_session_id=maybe(texts),
        delivery=st.sampled_from(p.Delivery),
        binary_output=st.booleans(),
    ),
    "process/start": st.builds(
        p.StartParams,
        process_id=process_ids,
        argv=argvs,
        cwd=maybe(absolute_paths),
        env=envs,
        inherit_env=st.booleans(),
        pipe_stdin=st.booleans(),
        timeout_ms=maybe(MILLISECONDS),
        sandbox=maybe(sandbox_policies),
        retain_bytes=maybe(POSITIVE),
        retain_after_close_ms=maybe(MILLISECONDS),
        tty=st.booleans(),
        size=maybe(st.builds(p.TerminalSize, rows=DIMENSIONS, cols=DIMENSIONS)),
    ),
    "process/read": st.builds(
        p.ReadParams, process_id=process_ids, after_seq=NON_NEGATIVE, max_bytes=maybe(POSITIVE), wait_ms=MILLISECONDS
    ),
    "process/write": st.builds(p.WriteParams, process_id=process_ids, chunk=chunks, write_id=maybe(texts), eof=st.booleans()),
    "process/signal": st.builds(p.SignalParams, process_id=process_ids, signal=st.sampled_from(p.SignalName)),
    "process/terminate": st.builds(p.TerminateParams, process_id=process_ids, grace_ms=MILLISECONDS),
    "process/release": st.builds(p.ReleaseParams, process_id=process_ids),
    "process/resize": st.builds(p.ResizeParams, process_id=process_ids, rows=DIMENSIONS, cols=DIMENSIONS),
    "process/list": st.builds(p.EmptyParams),
}

EVENTS: Final[dict[str, st.SearchStrategy[Any]]] = {
    "initialized": st.builds(p.InitializedParams),
    "process/output": st.builds(
        p.OutputEvent, process_id=process_ids, seq=POSITIVE, stream=st.sampled_from(p.Stream), chunk=chunks
    ),
    "process/exited": st.builds(
        p.ExitedEvent,
        process_id=process_ids,
        seq=POSITIVE,
        exit_code=INT64,
        signal=maybe(texts),
        timed_out=st.booleans(),
        sandbox_denied=maybe(st.booleans()),
        duration_ms=maybe(finite_floats),
        usage=maybe(usages),
        denials=denials,
        sandbox_denied_source=maybe(texts),
    ),
    "process/closed": st.builds(p.ClosedEvent, process_id=process_ids, seq=POSITIVE),
}

RESULTS: Final[dict[str, st.SearchStrategy[Any]]] = {
    "initialize": st.builds(
        p.InitializeResult,
        session_id=texts,
        server_name=texts,
        server_version=texts,
        protocol_version=INT64,
        capabilities=st.builds(
            p.Capabilities,
            push_events=st.booleans(),
            lossless=st.booleans(),
            release=st.booleans(),
            sandbox=json_objects,
            binary_output=st.booleans(),
        ),
        limits=st.builds(
            p.Limits,
            max_message_bytes=INT64,
            max_processes_per_session=INT64,
            retain_bytes=INT64,
            retain_total_bytes=INT64,
            retain_after_close_ms=INT64,
            detached_session_ttl_ms=INT64,
            slow_consumer_timeout_ms=INT64,
        ),
        resumed=st.booleans(),
    ),
    "process/start": st.builds(p.StartResult, process_id=process_ids, pid=INT64, sandbox_type=texts),
    "process/read": st.builds(
        p.ReadResult,
        chunks=st.lists(
            st.builds(p.OutputChunk, seq=POSITIVE, stream=st.sampled_from(p.Stream), chunk=chunks), max_size=4
        ).map(tuple),
        next_seq=INT64,
        retained_from_seq=INT64,
        exited=st.booleans(),
        exit_code=maybe(INT64),
        signal=maybe(texts),
        timed_out=st.booleans(),
        sandbox_denied=maybe(st.booleans()),
        closed=st.booleans(),
        failure=maybe(texts),
        last_seq=maybe(INT64),
        duration_ms=maybe(finite_floats),
        usage=maybe(usages),
        denials=denials,
        sandbox_denied_source=maybe(texts),
        evicted_bytes=maybe(st.builds(p.StreamBytes, stdout=INT64, stderr=INT64)),
    ),
    "process/write": st.builds(p.WriteResult, status=st.sampled_from(p.WriteStatus)),
    "process/signal": st.builds(p.SignalResult, delivered=st.booleans()),
    "process/terminate": st.builds(p.TerminateResult, running=st.booleans()),
    "process/release": st.builds(p.EmptyResult),
    "process/resize": st.builds(p.EmptyResult),
    "process/list": st.builds(
        p.ListResult,
        processes=st.lists(
            st.builds(
                p.ProcessInfo,
                process_id=process_ids,
                pid=INT64,
                argv=st.lists(texts, max_size=3).map(tuple),
                state=st.sampled_from(p.ProcessState),
                next_seq=INT64,
            ),
            max_size=3,
        ).map(tuple),
    ),
}

PROTOCOL_ERRORS = st.builds(
    p.ProtocolError,
    code=st.sampled_from(p.ErrorCode) | INT64,
    message=texts,
    data=maybe(json_objects),
    request_id=maybe(request_ids),
)


def test_strategies_cover_every_message() -> None:
    assert set(PARAMS) == set(p.REQUEST_METHODS) == set(RESULTS)
    assert set(EVENTS) == set(p.NOTIFICATION_METHODS)


# --- (a) encode -> decode is the identity ---------------------------------------------------------


@THOROUGH
@given(method_and_params=st.one_of([st.tuples(st.just(m), s) for m, s in PARAMS.items()]), request_id=request_ids)
def test_request_round_trip(method_and_params: tuple[str, Any], request_id: p.RequestId) -> None:
    method, params = method_and_params
    request = p.Request(request_id, method, params)
    assert p.decode(p.encode(request)) == request
    assert p.decode(p.encode_request(request_id, params, method)) == request


@THOROUGH
@given(method_and_event=st.one_of([st.tuples(st.just(m), s) for m, s in EVENTS.items()]))
def test_notification_round_trip(method_and_event: tuple[str, Any]) -> None:
    method, event = method_and_event
    assert p.decode(p.encode_notification(event)) == p.Notification(method, event)


@THOROUGH
@given(method_and_result=st.one_of([st.tuples(st.just(m), s) for m, s in RESULTS.items()]), request_id=request_ids)
def test_result_round_trip(method_and_result: tuple[str, Any], request_id: p.RequestId) -> None:
    method, result = method_and_result
    response = p.decode(p.encode_result(request_id, result))
    assert isinstance(response, p.Response)
    assert response.id == request_id
    assert p.decode_result(method, response.result) == result


@FAST
@given(error=PROTOCOL_ERRORS)
def test_error_round_trip(error: p.ProtocolError) -> None:
    assert p.decode(p.encode_error(error)) == p.ErrorResponse(error.request_id, error.code, error.message, error.data)


@FAST
@given(event=EVENTS["process/output"])
def test_binary_output_frame_round_trip(event: p.OutputEvent) -> None:
    assert p.decode_binary_output(p.encode_binary_output(event)) == event


# --- (b) decoding anything raises nothing but ProtocolError -------------------------------------

DECODE_ERROR_CODES: Final = {
    p.ErrorCode.PARSE_ERROR,
    p.ErrorCode.INVALID_REQUEST,
    p.ErrorCode.METHOD_NOT_FOUND,
    p.ErrorCode.INVALID_PARAMS,
    p.ErrorCode.LIMIT_EXCEEDED,  # nested deeper than the codec's bound, checked before the parse
}


def decode_or_error(text: str | bytes) -> p.Message | p.ProtocolError:
    """Decode; a ProtocolError is a legal outcome, any other exception fails the test."""
    try:
        message = p.decode(text)
    except p.ProtocolError as error:
        event(f"error {error.code}")  # --hypothesis-show-statistics shows how deep examples got
        assert error.code in DECODE_ERROR_CODES, error
        if error.code == p.ErrorCode.INVALID_PARAMS:
            assert error.data is not None and error.data["errors"], error
        # Whatever went wrong, the answer is ASCII-only JSON (so always valid UTF-8 on the
        # wire, even when it echoes a lone surrogate) and reads back as that error.
        answer = p.encode_error(error)
        assert answer.isascii()
        assert p.decode(answer) == p.ErrorResponse(error.request_id, error.code, error.message, error.data)
        return error
    event(f"accepted {type(message).__name__}")
    # Anything accepted re-encodes, as ASCII-only JSON, to an equal message.
    text_out = p.encode(message)
    assert text_out.isascii()
    assert p.decode(text_out) == message
    return message


@THOROUGH
@given(value=json_values)
def test_arbitrary_json_values(value: Any) -> None:
    decode_or_error(json.dumps(value))


# Envelopes whose members are drawn from the real vocabulary, so that the examples get past
# the envelope checks and into the converter rather than dying at "not an object".
METHOD_NAMES: Final = sorted({*p.REQUEST_METHODS, *p.NOTIFICATION_METHODS, "process/bogus"})
error_objects = st.fixed_dictionaries({"code": INT64, "message": texts}, optional={"data": json_values})
# Well-formed envelopes reach the converter; the loose ones put any JSON in every member.
calls = st.fixed_dictionaries(
    {"method": st.sampled_from(METHOD_NAMES), "params": json_objects},
    optional={"jsonrpc": st.just("2.0"), "id": request_ids},
)
loose_calls = st.fixed_dictionaries(
    {"method": st.sampled_from(METHOD_NAMES) | json_values},
    optional={"jsonrpc": st.just("2.0") | json_values, "id": request_ids | json_values, "params": json_values},
)
responses = st.fixed_dictionaries(
    {"id": request_ids}, optional={"jsonrpc": st.just("2.0")}
).flatmap(lambda envelope: st.one_of(
    st.fixed_dictionaries({"result": json_values}).map(lambda body: {**envelope, **body}),
    st.fixed_dictionaries({"error": error_objects}).map(lambda body: {**envelope, **body}),
))
loose_responses = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | json_values,
        "id": request_ids | json_values,
        "result": json_values,
        "error": error_objects | json_values,
    },
)
envelopes = st.one_of(
    calls,
    loose_calls,
    responses,
    loose_responses,
    st.tuples(calls | responses, json_objects).map(lambda pair: {**pair[1], **pair[0]}),
)


@THOROUGH
@given(envelope=envelopes)
def test_arbitrary_envelopes(envelope: dict[str, Any]) -> None:
    decode_or_error(json.dumps(envelope))


# Strings with lone surrogates: json.dumps writes them as \\udXXX escapes, which JSON allows.
surrogate_texts = st.text(alphabet=st.characters(categories=["Cs", "Ll", "Nd"]), max_size=6)


@FAST
@given(
    request_id=surrogate_texts,
    method=surrogate_texts | st.sampled_from(METHOD_NAMES),
    params=st.dictionaries(surrogate_texts, surrogate_texts, max_size=3),
)
def test_lone_surrogates_anywhere(request_id: str, method: str, params: dict[str, str]) -> None:
    decode_or_error(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))


@THOROUGH
@given(text=st.text())
def test_arbitrary_text(text: str) -> None:
    decode_or_error(text)


@THOROUGH
@given(data=st.binary())
def test_arbitrary_bytes(data: bytes) -> None:
    decode_or_error(data)


@FAST
@given(
    text=st.text(alphabet=string.printable, max_size=40).map(lambda noise: '{"id":1,"method":"process/list"' + noise)
)
def test_truncated_and_garbled_json(text: str) -> None:
    decode_or_error(text)


@FAST
@given(frame=st.binary(max_size=64))
def test_arbitrary_binary_frames(frame: bytes) -> None:
    try:
        event = p.decode_binary_output(frame)
    except p.ProtocolError as error:
        assert error.code == p.ErrorCode.PARSE_ERROR
    else:
        assert isinstance(event, p.OutputEvent)


# --- (c) any object as params: a valid typed object, or -32602 pointing into $.params -------------


def wire_fields(type_: type) -> list[str]:
    return [wire_name(field.name) for field in attrs.fields(type_)]


def params_objects(type_: type, valid: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects near and far from valid params of ``type_``."""
    keys = st.sampled_from(wire_fields(type_)) if attrs.fields(type_) else st.nothing()
    anything = st.dictionaries(keys | texts, json_values, max_size=6)
    valid_wire = valid.map(lambda obj: json.loads(json.dumps(p.unstructure(obj))))

    @st.composite
    def mutated(draw: st.DrawFn) -> dict[str, Any]:
        params = dict(draw(valid_wire))
        for _ in range(draw(st.integers(1, 3))):
            action = draw(st.sampled_from(["replace", "drop", "add"]))
            if action == "replace" and params:
                params[draw(st.sampled_from(sorted(params)))] = draw(json_values)
            elif action == "drop" and params:
                del params[draw(st.sampled_from(sorted(params)))]
            else:
                params[draw(keys | texts)] = draw(json_values)
        return params

    return st.one_of(anything, valid_wire, mutated())


def check_params_outcome(text: str, method: str, type_: type, request_id: p.RequestId | None) -> None:
    try:
        message = p.decode(text)
    except p.ProtocolError as error:
        event("rejected")
        assert error.code == p.ErrorCode.INVALID_PARAMS, error
        assert error.request_id == request_id
        assert error.data is not None
        errors = error.data["errors"]
        assert errors and all(isinstance(line, str) for line in errors)
        for line in errors:
            assert " @ $.params" in line, line
        assert error.message == f"invalid params: {errors[0]}"
        return
    event("accepted")
    assert isinstance(message, p.Request | p.Notification)
    assert message.method == method
    assert type(message.params) is type_
    # The object exists, so its validators passed; and it survives a round trip.
    attrs.validate(message.params)
    assert p.decode(p.encode(message)) == message


REQUEST_CASES: Final = [(method, params_type) for method, (params_type, _result) in p.REQUEST_METHODS.items()]


@pytest.mark.parametrize(("method", "params_type"), REQUEST_CASES, ids=[m for m, _t in REQUEST_CASES])
@FAST
@given(data=st.data())
def test_any_object_as_request_params(method: str, params_type: type, data: st.DataObject) -> None:
    params = data.draw(params_objects(params_type, PARAMS[method]), label="params")
    text = json.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params})
    check_params_outcome(text, method, params_type, 9)


@pytest.mark.parametrize(("method", "params_type"), list(p.NOTIFICATION_METHODS.items()), ids=list(p.NOTIFICATION_METHODS))
@FAST
@given(data=st.data())
def test_any_object_as_notification_params(method: str, params_type: type, data: st.DataObject) -> None:
    params = data.draw(params_objects(params_type, EVENTS[method]), label="params")
    text = json.dumps({"jsonrpc": "2.0", "method": method, "params": params})
    check_params_outcome(text, method, params_type, None)


RESULT_CASES: Final = [(method, result_type) for method, (_params, result_type) in p.REQUEST_METHODS.items()]


@pytest.mark.parametrize(("method", "result_type"), RESULT_CASES, ids=[m for m, _t in RESULT_CASES])
@FAST
@given(data=st.data())
def test_any_object_as_result(method: str, result_type: type, data: st.DataObject) -> None:
    raw = data.draw(params_objects(result_type, RESULTS[method]), label="result")
    try:
        result = p.decode_result(method, raw)
    except p.ProtocolError as error:
        event("rejected")
        assert error.code == p.ErrorCode.INVALID_PARAMS
        assert error.data is not None
        assert all(" @ $.result" in line for line in error.data["errors"])
    else:
        event("accepted")
        assert type(result) is result_type
        assert p.decode_result(method, p.decode(p.encode_result(1, result)).result) == result


# --- a client tolerates what a newer server adds; a server tolerates nothing -------------------------

extra_members = st.dictionaries(texts.map(lambda key: "x-" + key), json_values, min_size=1, max_size=3)


@FAST
@given(method_and_result=st.one_of([st.tuples(st.just(m), s) for m, s in RESULTS.items()]), extra=extra_members)
def test_unknown_result_fields_are_ignored_by_a_client_only(method_and_result: tuple[str, Any], extra: dict[str, Any]) -> None:
    method, result = method_and_result
    raw = {**json.loads(json.dumps(p.unstructure(result))), **extra}
    assert p.decode_result(method, raw) == result
    with pytest.raises(p.ProtocolError) as info:
        p.decode_result(method, raw, tolerant=False)
    assert info.value.code == p.ErrorCode.INVALID_PARAMS


@FAST
@given(method_and_event=st.one_of([st.tuples(st.just(m), s) for m, s in EVENTS.items()]), extra=extra_members)
def test_unknown_event_fields_are_ignored_by_a_client_only(method_and_event: tuple[str, Any], extra: dict[str, Any]) -> None:
    method, event = method_and_event
    envelope = json.loads(p.encode_notification(event))
    text = json.dumps({**envelope, "params": {**envelope["params"], **extra}})
    assert p.decode(text, tolerant=True) == p.Notification(method, event)
    with pytest.raises(p.ProtocolError) as info:
        p.decode(text)
    assert info.value.code == p.ErrorCode.INVALID_PARAMS
