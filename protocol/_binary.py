"""Binary framing of ``process/output``, negotiated with ``initialize{binaryOutput: true}``.

JSON + base64 costs a third more bytes and a base64 pass on each side. A client that opts
in receives output events as binary WebSocket frames instead:

    offset  size  field
    0       1     frame type, 0x01 = process/output
    1       1     stream: 0x01 stdout, 0x02 stderr, 0x03 pty
    2       8     seq, unsigned big-endian
    10      1     n = length of processId in bytes (1..128)
    11      n     processId, ASCII
    11+n    ...   the chunk, raw bytes

Every other message stays a JSON text frame.
"""

from __future__ import annotations

import struct
from typing import Final

from ._errors import ErrorCode, ProtocolError
from ._messages import OutputEvent, Stream

FRAME_OUTPUT: Final = 0x01
_HEADER: Final = struct.Struct(">BBQB")
_STREAM_CODES: Final = {Stream.STDOUT: 0x01, Stream.STDERR: 0x02, Stream.PTY: 0x03}
_STREAMS: Final = {code: stream for stream, code in _STREAM_CODES.items()}


def encode_binary_output(event: OutputEvent) -> bytes:
    process_id = event.process_id.encode("ascii")
    header = _HEADER.pack(FRAME_OUTPUT, _STREAM_CODES[event.stream], event.seq, len(process_id))
    return b"".join((header, process_id, event.chunk))


def decode_binary_output(frame: bytes | bytearray | memoryview) -> OutputEvent:
    """Decode one binary frame.

    Raises:
        ProtocolError: -32700 for a frame that is not a well-formed output frame.
    """
    view = memoryview(frame)
    if len(view) < _HEADER.size:
        raise ProtocolError(ErrorCode.PARSE_ERROR, "parse error: binary frame too short")
    kind, stream_code, seq, id_length = _HEADER.unpack_from(view)
    end = _HEADER.size + id_length
    if kind != FRAME_OUTPUT or stream_code not in _STREAMS or not id_length or len(view) < end or seq < 1:
        raise ProtocolError(ErrorCode.PARSE_ERROR, "parse error: malformed binary output frame")
    try:
        process_id = bytes(view[_HEADER.size : end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.PARSE_ERROR, "parse error: processId is not ASCII") from None
    return OutputEvent(process_id=process_id, seq=seq, stream=_STREAMS[stream_code], chunk=bytes(view[end:]))
