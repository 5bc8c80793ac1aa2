"""The exec protocol, sans-io: messages, the codec, error codes and the client's state machine."""

from ._codec import (
    NOTIFICATION_METHODS as NOTIFICATION_METHODS,
    REQUEST_METHODS as REQUEST_METHODS,
    ErrorResponse as ErrorResponse,
    Message as Message,
    Notification as Notification,
    Request as Request,
    Response as Response,
    check_bounds as check_bounds,
    decode as decode,
    decode_result as decode_result,
    encode as encode,
    encode_error as encode_error,
    encode_notification as encode_notification,
    encode_request as encode_request,
    encode_result as encode_result,
    sniff_request_id as sniff_request_id,
    structure as structure,
    unstructure as unstructure,
    wire_name as wire_name,
)
from ._binary import decode_binary_output as decode_binary_output, encode_binary_output as encode_binary_output
from ._errors import ErrorCode as ErrorCode, ProtocolError as ProtocolError, RequestId as RequestId
from ._messages import *  # noqa: F403  (the message classes are the package's vocabulary)
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._assembler import (
    DEFAULT_MAX_OUTPUT_BYTES as DEFAULT_MAX_OUTPUT_BYTES,
    LONG_POLL_WAIT_MS as LONG_POLL_WAIT_MS,
    READ_MAX_BYTES as READ_MAX_BYTES,
    REORDER_BUFFER_BYTES as REORDER_BUFFER_BYTES,
    REORDER_BUFFER_EVENTS as REORDER_BUFFER_EVENTS,
    Action as Action,
    Assembler as Assembler,
    AssemblerError as AssemblerError,
    AssemblerState as AssemblerState,
    Complete as Complete,
    Completion as Completion,
    NeedRead as NeedRead,
    Progress as Progress,
    TerminalRecord as TerminalRecord,
    Wait as Wait,
)
