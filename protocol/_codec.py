"""The codec: one strict cattrs converter, JSON-RPC 2.0 framing, and one decode entry point.

``decode(text)`` turns any input into a typed message or raises ``ProtocolError`` with the
right JSON-RPC code; nothing else escapes it. Wire names come from the explicit method
tables below, never from class names.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import typing
from typing import Any, Final, cast

import attrs
import cattrs
import pybase64
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from . import _messages as m
from ._errors import ErrorCode, ProtocolError, RequestId

# --- method tables ------------------------------------------------------------------------

REQUEST_METHODS: Final[dict[str, tuple[type, type]]] = {
    "initialize": (m.InitializeParams, m.InitializeResult),
    "process/start": (m.StartParams, m.StartResult),
    "process/read": (m.ReadParams, m.ReadResult),
    "process/write": (m.WriteParams, m.WriteResult),
    "process/signal": (m.SignalParams, m.SignalResult),
    "process/terminate": (m.TerminateParams, m.TerminateResult),
    "process/release": (m.ReleaseParams, m.EmptyResult),
    "process/resize": (m.ResizeParams, m.EmptyResult),
    "process/list": (m.EmptyParams, m.ListResult),
}
NOTIFICATION_METHODS: Final[dict[str, type]] = {
    "initialized": m.InitializedParams,
    "process/output": m.OutputEvent,
    "process/exited": m.ExitedEvent,
    "process/closed": m.ClosedEvent,
}
_METHOD_OF_PARAMS: Final[dict[type, str]] = {
    params: method for method, (params, _result) in REQUEST_METHODS.items() if params is not m.EmptyParams
} | {params: method for method, params in NOTIFICATION_METHODS.items()}


# --- envelopes ----------------------------------------------------------------------------


@attrs.frozen
class Request:
    """An incoming or outgoing call; ``method`` names ``params``' type in ``REQUEST_METHODS``."""

    id: RequestId
    method: str
    params: Any


@attrs.frozen
class Notification:
    method: str
    params: Any


@attrs.frozen
class Response:
    """A successful answer; ``result`` stays raw until ``decode_result`` knows the method."""

    id: RequestId
    result: Any


@attrs.frozen
class ErrorResponse:
    id: RequestId | None
    code: int
    message: str
    data: Any = None


Message = Request | Notification | Response | ErrorResponse

# --- the converter ------------------------------------------------------------------------

_CAMEL_RE: Final = re.compile(r"_([a-z])")


def wire_name(name: str) -> str:
    """``after_seq`` → ``afterSeq``."""
    return _CAMEL_RE.sub(lambda match: match.group(1).upper(), name)


def _structure_str(value: Any, type_: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if type_ is not str and issubclass(type_, enum.Enum):
        try:
            return cast(str, type_(value))  # a str-valued Enum member is a str
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in type_)
            raise ValueError(f"expected one of {allowed}, got {value!r}") from None
    return value


def _structure_utf8_str(value: Any, type_: type) -> str:
    text = _structure_str(value, type_)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # JSON may spell a lone surrogate ("\\ud800"); no OS interface can carry one.
            raise ValueError(f"not valid Unicode: lone surrogate at character {exc.start}") from None
    return text


def _structure_int(value: Any, _type: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError("integer out of range")
    return value


def _structure_float(value: Any, _type: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _structure_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _structure_bytes(value: Any, _type: type) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a base64 string, got {type(value).__name__}")
    try:
        # pybase64 (SIMD) decodes ~40x faster than binascii: base64 was 45% of the client's
        # time on a text-framed stream. It refuses a little more (excess padding such as
        # "AAAA="); what it refuses goes to the standard decoder, which keeps the last word.
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None


def _structure_any(value: Any, _type: type) -> Any:
    return value


def _is_tuple(type_: Any) -> bool:
    return typing.get_origin(type_) is tuple


def _is_dict(type_: Any) -> bool:
    return typing.get_origin(type_) is dict


def _is_enum(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, enum.Enum)


def _make_converter(*, forbid_extra_keys: bool) -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=forbid_extra_keys)
    # cattrs' defaults call ``int(value)``/``str(value)``; ours refuse to coerce. Every
    # enum of the protocol is a ``str`` subclass, so the string hook also serves enums.
    # What a server receives must be valid Unicode (argv, env and paths reach the OS); what
    # a client receives may carry a lone surrogate (a denial's path decoded with
    # surrogateescape).
    string_hook = _structure_utf8_str if forbid_extra_keys else _structure_str
    for exact_type, hook in (
        (str, string_hook),
        (int, _structure_int),
        (float, _structure_float),
        (bool, _structure_bool),
        (bytes, _structure_bytes),
    ):
        converter.register_structure_hook(exact_type, hook)
    converter.register_structure_hook(Any, _structure_any)
    converter.register_unstructure_hook(bytes, lambda value: pybase64.b64encode(value).decode("ascii"))

    converter.register_unstructure_hook_factory(_is_enum, lambda _type: lambda value: value.value)

    def tuple_hook_factory(type_: Any) -> Any:
        args = typing.get_args(type_)
        item_hook = converter.get_structure_hook(args[0])
        item_type = args[0]

        def structure_tuple(value: Any, _type: Any) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            items = []
            errors = []
            for index, item in enumerate(value):
                try:
                    items.append(item_hook(item, item_type))
                except Exception as exc:  # collected into one group, as cattrs does
                    exc.__notes__ = [*getattr(exc, "__notes__", []), f"@index {index}"]
                    errors.append(exc)
            if errors:
                raise IterableValidationError("invalid list items", errors, type_)
            return tuple(items)

        return structure_tuple

    def dict_hook_factory(type_: Any) -> Any:
        key_type, value_type = typing.get_args(type_)
        value_hook = converter.get_structure_hook(value_type)

        def structure_dict(value: Any, _type: Any) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            result = {}
            for key, item in value.items():
                try:
                    string_hook(key, str)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"key {key!r}: {exc}") from None
                try:
                    result[key] = value_hook(item, value_type)
                except ValueError as exc:
                    raise ValueError(f"value of {key!r}: {exc}") from None
            return result

        return structure_dict

    converter.register_structure_hook_factory(_is_tuple, tuple_hook_factory)
    converter.register_structure_hook_factory(_is_dict, dict_hook_factory)
    converter.register_unstructure_hook_factory(
        _is_tuple, lambda _type: lambda value: [converter.unstructure(item) for item in value]
    )

    def attrs_structure_factory(type_: type) -> Any:
        renames: dict[str, Any] = {a.name: override(rename=wire_name(a.name)) for a in attrs.fields(type_)}
        inner: Any = make_dict_structure_fn(type_, converter, _cattrs_forbid_extra_keys=forbid_extra_keys, **renames)

        def structure_object(value: Any, _type: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return inner(value, _type)

        return structure_object

    def attrs_unstructure_factory(type_: type) -> Any:
        # A field marked OMIT_IF_DEFAULT stays off the wire at its default (an extension
        # field that servers without it would refuse as an unknown key).
        renames: dict[str, Any] = {
            a.name: override(rename=wire_name(a.name), omit_if_default=bool(a.metadata.get(m.OMIT_IF_DEFAULT)))
            for a in attrs.fields(type_)
        }
        return make_dict_unstructure_fn(type_, converter, **renames)

    converter.register_structure_hook_factory(attrs.has, attrs_structure_factory)
    converter.register_unstructure_hook_factory(attrs.has, attrs_unstructure_factory)
    return converter


# Strict for what a server receives from clients: unknown fields are refused (-32602).
converter: Final = _make_converter(forbid_extra_keys=True)
# For what a client receives from a server: types are as strict, but fields a newer
# server adds are ignored, so a client keeps working against it.
tolerant_converter: Final = _make_converter(forbid_extra_keys=False)


# --- error paths ------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown field(s) {sorted(exc.extra_fields)}"
    return str(exc) or type(exc).__name__


def error_paths(exc: BaseException, path: str = "$") -> list[str]:
    """Flatten a cattrs validation error into ``"<message> @ $.path"`` strings."""
    if isinstance(exc, ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        lines: list[str] = []
        for sub, note in with_notes:
            lines.extend(error_paths(sub, f"{path}.{wire_name(note.name)}"))
        for sub in without_notes:
            lines.extend(error_paths(sub, path))
        return lines
    if isinstance(exc, IterableValidationError):
        lines = []
        for sub in exc.exceptions:
            index = next(
                (n.removeprefix("@index ") for n in getattr(sub, "__notes__", []) if isinstance(n, str) and n.startswith("@index ")),
                "?",
            )
            lines.extend(error_paths(sub, f"{path}[{index}]"))
        return lines
    if isinstance(exc, ExceptionGroup):
        return [line for sub in exc.exceptions for line in error_paths(sub, path)]
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return [f"unknown field @ {path}.{key}" for key in sorted(exc.extra_fields)]
    if isinstance(exc, m.FieldError):
        return [f"{exc} @ {path}.{wire_name(exc.field)}"]
    return [f"{_describe(exc)} @ {path}"]


def structure(value: Any, type_: type, path: str = "$", *, tolerant: bool = False) -> Any:
    """Structure ``value`` into ``type_`` or raise -32602 with path details.

    ``tolerant`` ignores unknown fields (for messages from a server; see ``tolerant_converter``).
    """
    try:
        return (tolerant_converter if tolerant else converter).structure(value, type_)
    except Exception as exc:  # every structuring failure is an invalid-params answer
        errors = error_paths(exc, path)
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"invalid params: {errors[0]}", {"errors": errors}
        ) from None


def unstructure(value: Any) -> Any:
    return converter.unstructure(value)


# --- encode -----------------------------------------------------------------------------


def _dumps(payload: dict[str, Any]) -> str:
    # ASCII-only output: a lone surrogate echoed from input (an id, a method name) must not
    # make the answer unencodable as UTF-8.
    # allow_nan=False: NaN/Infinity are not JSON; a bug that produced one fails loudly here.
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def encode_request(request_id: RequestId, params: Any, method: str | None = None) -> str:
    """Encode a call. ``method`` is needed only for parameterless methods (``process/list``)."""
    method = method or _METHOD_OF_PARAMS[type(params)]
    return _dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": unstructure(params)})


def encode_notification(params: Any) -> str:
    return _dumps({"jsonrpc": "2.0", "method": _METHOD_OF_PARAMS[type(params)], "params": unstructure(params)})


def encode_result(request_id: RequestId, result: Any) -> str:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "result": unstructure(result)})


def encode_error(error: ProtocolError) -> str:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return _dumps({"jsonrpc": "2.0", "id": error.request_id, "error": body})


def encode(message: Message) -> str:
    """Encode any envelope (used by fakes and tests that speak both directions)."""
    if isinstance(message, Request):
        return encode_request(message.id, message.params, message.method)
    if isinstance(message, Notification):
        return _dumps({"jsonrpc": "2.0", "method": message.method, "params": unstructure(message.params)})
    if isinstance(message, Response):
        return encode_result(message.id, message.result)
    return encode_error(ProtocolError(message.code, message.message, message.data, request_id=message.id))


# --- bounds before the parse -----------------------------------------------------------------
#
# A parsed JSON value costs far more memory than its text: ``[{},{},…]`` is 3 bytes per empty
# dict of ~64 bytes, so a 16 MiB message could take 400 MiB before any check ran. Counting
# costs little: ``str.count`` of the structural characters runs at memory speed, and a
# legitimate message is far under both bounds, so the common case never strips strings.
# Over the cheap count (which counts characters inside strings too), strings are taken out
# and the count is made exact; the depth is computed only then, on the brackets alone.

# Values in one message (containers and scalars): more is -32005 before it is parsed.
MAX_JSON_VALUES: Final = 1 << 18
# Nesting of arrays and objects in one message: deeper is -32005 before it is parsed.
MAX_JSON_DEPTH: Final = 64
# Escape pairs go first (a backslash outside a string is not JSON anyway); what is left of a
# string is then quote, non-quotes, quote: both patterns match in linear time, whatever
# the input (no backtracking pattern is ever run over attacker text).
_ESCAPES: Final = re.compile(r"\\.", re.DOTALL)
_ESCAPES_B: Final = re.compile(rb"\\.", re.DOTALL)
_STRINGS: Final = re.compile(r'"[^"]*+"')
_STRINGS_B: Final = re.compile(rb'"[^"]*+"')
_NOT_BRACKETS: Final = re.compile(r"[^\[\]{}]+")
_NOT_BRACKETS_B: Final = re.compile(rb"[^\[\]{}]+")
_INNERMOST: Final = re.compile(r"\[\]|\{\}")


def _too_big(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"limit exceeded: {message}")


def check_bounds(text: str | bytes, *, max_values: int = MAX_JSON_VALUES, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse, before parsing, JSON with more than ``max_values`` values or deeper than ``max_depth``.

    Raises:
        ProtocolError: -32005 (the id cannot be known without the parse: it is null).
    """
    if isinstance(text, str):
        opens = text.count("[") + text.count("{")
        commas = text.count(",")
    else:
        opens = text.count(b"[") + text.count(b"{")
        commas = text.count(b",")
    if opens <= max_depth and opens + commas < max_values:
        return  # the common case: a bound on the count bounds both
    # Each value is an element of a container (one more than its commas) or the top value.
    if isinstance(text, str):
        bare = _STRINGS.sub("", _ESCAPES.sub("", text))
        opens, commas = bare.count("[") + bare.count("{"), bare.count(",")
    else:
        bare_b = _STRINGS_B.sub(b"", _ESCAPES_B.sub(b"", text))
        opens, commas = bare_b.count(b"[") + bare_b.count(b"{"), bare_b.count(b",")
    if opens + commas + 1 > max_values:
        raise _too_big(f"more than {max_values} JSON values in one message")
    if opens <= max_depth:
        return
    if isinstance(text, str):
        brackets = _NOT_BRACKETS.sub("", bare)
    else:
        brackets = _NOT_BRACKETS_B.sub(b"", bare_b).decode("ascii")
    # Peel the innermost pairs off, one level per pass: deeper than max_depth passes is too deep.
    deep_run = re.compile(f"[\\[{{]{{{max_depth + 1}}}")  # that many opens in a row
    for _level in range(max_depth):
        if deep_run.search(brackets):
            break
        peeled = _INNERMOST.sub("", brackets)
        if not peeled or peeled == brackets:
            return  # all peeled, or unbalanced: the parse gives the precise error
        brackets = peeled
    raise _too_big(f"JSON nested deeper than {max_depth} levels")


_HEAD_BYTES: Final = 4096
# The id of a message too big to parse, when it comes before anything nested (as every
# client of this protocol writes it): `{"jsonrpc":"2.0","id":7,...` or `{"id":"a","method":...`.
_ID_IN_HEAD: Final = re.compile(
    r'\A\s*\{(?:\s*"(?:jsonrpc|method)"\s*:\s*"[^"\\]{0,256}"\s*,)*\s*"id"\s*:\s*(-?\d{1,19}|"[^"\\]{0,1024}")\s*[,}]'
)


def sniff_request_id(text: str | bytes) -> RequestId | None:
    """The id of a call, read from the head of its text without parsing the rest (None: unknown)."""
    head = text[:_HEAD_BYTES]
    if isinstance(head, bytes):
        head = head.decode("utf-8", "replace")
    match = _ID_IN_HEAD.match(head)
    if match is None:
        return None
    value = json.loads(match.group(1))
    return value if _valid_id(value) else None


# --- decode -----------------------------------------------------------------------------


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def json_object(text: str | bytes, kind: str = "request") -> dict[str, Any]:
    """Parse one JSON-RPC message's JSON: strict (no NaN/Infinity), and an object.

    Raises:
        ProtocolError: -32700 for bad JSON, -32600 ("invalid ``kind``") for another value.
    """
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.PARSE_ERROR, "parse error: not valid JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"invalid {kind}: expected a JSON object")
    return payload


def decode(text: str | bytes, *, tolerant: bool = False) -> Message:
    """Decode one JSON-RPC message.

    Requests and notifications get typed params; responses keep a raw ``result``
    (see ``decode_result``). ``tolerant`` (for a client) ignores unknown fields of
    notifications and skips the bounds checked before the parse; a server decodes strictly.

    Raises:
        ProtocolError: -32700 for bad JSON, -32600 for a malformed envelope, -32601 for an
            unknown method, -32602 for bad params, -32005 past ``MAX_JSON_VALUES`` or
            ``MAX_JSON_DEPTH`` (not checked when ``tolerant``). ``request_id`` is set
            whenever the offending message carried a usable id.
    """
    if not tolerant:
        # What a server receives is bounded before the parse. A client reading its own
        # (trusted) server is not: a read answer of many one-byte chunks is legitimate.
        check_bounds(text)
    payload = json_object(text)
    raw_id = payload.get("id")
    request_id = raw_id if _valid_id(raw_id) else None
    if "jsonrpc" in payload and payload["jsonrpc"] != "2.0":
        raise ProtocolError(ErrorCode.INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', request_id=request_id)
    if "id" in payload and request_id is None and (raw_id is not None or "method" in payload):
        # A null id is only allowed on an error response that could not name its request.
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: id must be an integer or a string")

    if "method" not in payload:
        return _decode_response(payload, request_id)
    method = payload["method"]
    if not isinstance(method, str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: method must be a string", request_id=request_id)
    extra = set(payload) - {"jsonrpc", "id", "method", "params"}
    if extra:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"invalid request: unknown member(s) {sorted(extra)}", request_id=request_id
        )
    params = payload.get("params", {})
    if params is None:
        params = {}
    if "id" in payload and request_id is not None:
        entry = REQUEST_METHODS.get(method)
        if entry is None:
            raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method}", request_id=request_id)
        try:
            return Request(request_id, method, structure(params, entry[0], "$.params"))
        except ProtocolError as exc:
            raise exc.with_request_id(request_id) from None
    try:
        notification_type = NOTIFICATION_METHODS.get(method)
        if notification_type is None:
            raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method}")
        return Notification(method, structure(params, notification_type, "$.params", tolerant=tolerant))
    except ProtocolError as exc:
        exc.from_notification = True
        raise


def _decode_response(payload: dict[str, Any], request_id: RequestId | None) -> Response | ErrorResponse:
    extra = set(payload) - {"jsonrpc", "id", "result", "error"}
    if extra or ("result" in payload) == ("error" in payload):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid request: neither a call nor a response", request_id=request_id)
    if "result" in payload:
        if request_id is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid response: missing id")
        return Response(request_id, payload["result"])
    error = payload["error"]
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid response: malformed error object", request_id=request_id)
    code = error.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid response: error code must be an integer", request_id=request_id)
    return ErrorResponse(request_id, code, error["message"], error.get("data"))


def decode_result(method: str, result: Any, *, tolerant: bool = True) -> Any:
    """Structure a raw ``result`` for the call ``method``; raises ``ProtocolError`` if malformed.

    Tolerant of unknown fields by default: results come from a server, which may be newer.
    """
    return structure(result, REQUEST_METHODS[method][1], "$.result", tolerant=tolerant)
