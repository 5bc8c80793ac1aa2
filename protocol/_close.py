"""WebSocket close codes of the exec protocol (protocol doc §4), named once for server and client.

RFC 6455 codes the server sends or the WebSocket layer produces, and the private-use
(4000-4999) codes of this protocol. Whether a client should try to resume after each is
in ``RESUMABLE``.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["RESUMABLE", "CloseCode"]


class CloseCode(enum.IntEnum):
    """A close code, and why the connection ended with it."""

    #: The peer closed (or the server answers a peer's close). From a client, it also says
    #: "I am done": a session holding nothing more ends at once (protocol doc §4).
    NORMAL = 1000
    #: The server is shutting down.
    GOING_AWAY = 1001
    #: No close frame was received (never sent on the wire; what a library reports).
    ABNORMAL = 1006
    #: A text frame that is not valid UTF-8 (refused by the WebSocket layer).
    INVALID_DATA = 1007
    #: Slow consumer: a bestEffort writer was stuck past ``slowConsumerTimeoutMs``.
    POLICY = 1008
    #: A message over the WebSocket layer's size limit.
    TOO_BIG = 1009
    #: Another connection resumed (took over) the session.
    TAKEN_OVER = 4001
    #: The peer did not answer a ping within ``--ping-timeout``.
    PING_TIMEOUT = 4002


#: The close codes after which the session is detached and waiting for a resume.
RESUMABLE: Final = frozenset(
    {CloseCode.ABNORMAL, CloseCode.INVALID_DATA, CloseCode.POLICY, CloseCode.TOO_BIG, CloseCode.PING_TIMEOUT}
)
