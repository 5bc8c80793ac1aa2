"""Encoding pushed events for the wire, on the hot path.

``process/output`` is by far the most frequent message, so it is formatted directly
rather than through cattrs; the tests check it decodes to the same event as the generic
codec would produce.
"""

from __future__ import annotations

import json

import pybase64

import protocol as p


def encode_event(event: p.ProcessEvent, binary_output: bool = False) -> str | bytes:
    if isinstance(event, p.OutputEvent):
        if binary_output:
            return p.encode_binary_output(event)
        return (
            '{"jsonrpc":"2.0","method":"process/output","params":{"processId":'
            + json.dumps(event.process_id)
            + ',"seq":'
            + str(event.seq)
            + ',"stream":"'
            + event.stream.value
            + '","chunk":"'
            + pybase64.b64encode(event.chunk).decode("ascii")
            + '"}}'
        )
    return p.encode_notification(event)

