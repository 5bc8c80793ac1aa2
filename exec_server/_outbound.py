"""A connection's outbound queue: bounded in messages and in queued bytes.

Everything a connection writes passes through one ``OutboundQueue`` and one writer task.
Every item is charged its size (a message's length, an output event's chunk, a fixed
``EVENT_BYTES`` for ``exited``/``closed``), and three bounds apply:

- all items together: ``max_bytes`` — what a client that stops reading can make the
  server hold for it, whatever it asks for;
- output events: ``max_output_bytes`` (lossless connections keep it inside retention);
- a generous count of messages, so that a burst of small events from many processes does
  not look like a slow consumer.

One item larger than a byte bound still goes through when the queue holds nothing.

When full:
- ``offer_output`` (bestEffort output) refuses the chunk; the caller counts it dropped
  (the chunk stays retained; the client repairs the gap with ``process/read``).
- ``put_output`` (lossless output) waits for room; the waiting stops that process's pipe
  pump, which is how backpressure reaches the child.
- ``put`` (responses, ``exited``, ``closed``) waits for room.
- ``put_made`` (answers that are big to build: ``process/read``) waits for room for the
  largest answer it could be *before* building it, so callers that wait hold only their
  request, never their answer.
Waiters are served in the order they arrived, so a process's seqs stay in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from protocol import OutputEvent, ProcessEvent

OutboundItem = str | bytes | ProcessEvent

DEFAULT_MAX_MESSAGES: Final = 4096
DEFAULT_MAX_OUTPUT_BYTES: Final = 16 * 1024 * 1024
# What an event other than output is charged (its encoded size, generously).
EVENT_BYTES: Final = 1024


def _size(item: OutboundItem) -> int:
    if isinstance(item, OutputEvent):
        return len(item.chunk)
    if isinstance(item, str | bytes):
        return len(item)
    return EVENT_BYTES


class OutboundQueue:
    """The bounded queue between event producers and a connection's writer.

    Args:
        max_messages: capacity in messages (all kinds).
        max_output_bytes: capacity in queued ``process/output`` payload bytes.
        max_bytes: capacity in bytes of everything queued (default: ``max_output_bytes``).
    """

    def __init__(self, *, max_messages: int, max_output_bytes: int, max_bytes: int | None = None) -> None:
        self._send, self._receive = trio.open_memory_channel[OutboundItem](max_messages)
        self.max_output_bytes = max_output_bytes
        self.max_bytes = max_output_bytes if max_bytes is None else max_bytes
        self.output_bytes = 0
        self.queued_bytes = 0
        self._room = trio.Event()
        self._in_order = trio.Lock()  # trio's Lock is FIFO-fair: arrival order is kept
        self._abandoned = False

    def _has_room_for(self, size: int, *, output: bool) -> bool:
        if self.queued_bytes == 0:
            return True  # one item larger than a budget still goes through alone
        if self.queued_bytes + size > self.max_bytes:
            return False
        return not output or self.output_bytes + size <= self.max_output_bytes

    async def _wait_for_room(self, size: int, *, output: bool) -> None:
        while not self._has_room_for(size, output=output):
            if self._abandoned:
                raise trio.BrokenResourceError("the connection's writer is gone")
            await self._room.wait()

    def _charge(self, item: OutboundItem, sign: int) -> None:
        size = _size(item)
        self.queued_bytes += sign * size
        if isinstance(item, OutputEvent):
            self.output_bytes += sign * size

    async def _send_charged(self, item: OutboundItem) -> None:
        self._charge(item, +1)
        try:
            await self._send.send(item)
        except BaseException:
            self._charge(item, -1)
            raise

    def offer_output(self, event: OutputEvent) -> bool:
        """Queue an output event if there is room now; False means it was not queued.

        Refused too while an earlier item waits for room: it must not be overtaken.
        """
        if self._in_order.locked() or not self._has_room_for(len(event.chunk), output=True):
            return False
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            return False
        self._charge(event, +1)
        return True

    async def put_output(self, event: OutputEvent) -> None:
        """Queue an output event, waiting (in arrival order) for room."""
        if self.offer_output(event):
            return  # the common case: no waiting, no scheduling point
        async with self._in_order:
            await self._wait_for_room(len(event.chunk), output=True)
            await self._send_charged(event)

    async def put(self, item: OutboundItem) -> None:
        """Queue a must-deliver item, waiting (in arrival order) for room."""
        if not self._in_order.locked() and self._has_room_for(_size(item), output=False):
            try:
                self._send.send_nowait(item)
            except trio.WouldBlock:
                pass
            else:
                self._charge(item, +1)
                return
        async with self._in_order:
            await self._wait_for_room(_size(item), output=False)
            await self._send_charged(item)

    async def put_made(self, size: int, make: Callable[[], OutboundItem]) -> None:
        """Wait (in arrival order) for room for ``size`` bytes, then queue ``make()``.

        ``make`` runs only once there is room; if it raises, nothing is queued.
        """
        if not self._in_order.locked() and self._has_room_for(size, output=False):
            # The common case, with no scheduling point (put's own fast path): an answer
            # whose wait just ended (a long-poll woken at shutdown) is queued before a
            # cancellation can land.
            await self.put(make())
            return
        async with self._in_order:
            await self._wait_for_room(size, output=False)
            await self._send_charged(make())

    async def get(self) -> OutboundItem:
        """The next item for the writer. Raises ``trio.EndOfChannel`` once closed and empty."""
        return self._taken(await self._receive.receive())

    def get_nowait(self) -> OutboundItem:
        """The next item if one is queued now. Raises ``trio.WouldBlock`` if none is, and
        ``trio.EndOfChannel`` (or ``trio.ClosedResourceError``) as ``get`` would."""
        return self._taken(self._receive.receive_nowait())

    def _taken(self, item: OutboundItem) -> OutboundItem:
        self._charge(item, -1)
        room, self._room = self._room, trio.Event()
        room.set()
        return item

    def close_for_producers(self) -> None:
        """No more items; the writer still drains what is queued."""
        self._send.close()

    def abandon(self) -> None:
        """Drop everything: blocked producers get ``BrokenResourceError`` at once."""
        self._abandoned = True
        self._receive.close()
        room, self._room = self._room, trio.Event()
        room.set()
