"""A connection's outbound queue: bounded in messages and in queued output bytes.

Everything a connection writes passes through one ``OutboundQueue`` and one writer task.
Two bounds, because the items are of two kinds: output chunks (up to 256 KiB each) are
bounded by their total size, every other message by a generous count — so a burst of
small events from many processes does not look like a slow consumer.

When full:
- ``offer_output`` (bestEffort output) refuses the chunk; the caller counts it dropped
  (the chunk stays retained; the client repairs the gap with ``process/read``).
- ``put_output`` (lossless output) waits for room; the waiting stops that process's pipe
  pump, which is how backpressure reaches the child.
- ``put`` (responses, ``exited``, ``closed``) waits for room in the message count.
Waiters are served in the order they arrived, so a process's seqs stay in order.
"""

from __future__ import annotations

from typing import Final

import trio

from protocol import OutputEvent, ProcessEvent

OutboundItem = str | bytes | ProcessEvent

DEFAULT_MAX_MESSAGES: Final = 4096
DEFAULT_MAX_OUTPUT_BYTES: Final = 16 * 1024 * 1024


class OutboundQueue:
    """The bounded queue between event producers and a connection's writer.

    Args:
        max_messages: capacity in messages (all kinds).
        max_output_bytes: capacity in queued ``process/output`` payload bytes.
    """

    def __init__(self, *, max_messages: int, max_output_bytes: int) -> None:
        self._send, self._receive = trio.open_memory_channel[OutboundItem](max_messages)
        self.max_output_bytes = max_output_bytes
        self.output_bytes = 0
        self._room = trio.Event()
        self._in_order = trio.Lock()  # trio's Lock is FIFO-fair: arrival order is kept
        self._abandoned = False

    def _has_room_for(self, size: int) -> bool:
        # One chunk larger than the budget still goes through when the queue holds no output.
        return self.output_bytes == 0 or self.output_bytes + size <= self.max_output_bytes

    def offer_output(self, event: OutputEvent) -> bool:
        """Queue an output event if there is room now; False means it was not queued.

        Refused too while an earlier item waits for room: it must not be overtaken.
        """
        if self._in_order.locked() or not self._has_room_for(len(event.chunk)):
            return False
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            return False
        self.output_bytes += len(event.chunk)
        return True

    async def put_output(self, event: OutputEvent) -> None:
        """Queue an output event, waiting (in arrival order) for room."""
        if self.offer_output(event):
            return  # the common case: no waiting, no scheduling point
        async with self._in_order:
            while not self._has_room_for(len(event.chunk)):
                if self._abandoned:
                    raise trio.BrokenResourceError("the connection's writer is gone")
                await self._room.wait()
            self.output_bytes += len(event.chunk)
            try:
                await self._send.send(event)
            except BaseException:
                self.output_bytes -= len(event.chunk)
                raise

    async def put(self, item: OutboundItem) -> None:
        """Queue a must-deliver item, waiting (in arrival order) for room."""
        if not self._in_order.locked():
            try:
                self._send.send_nowait(item)
                return
            except trio.WouldBlock:
                pass
        async with self._in_order:
            await self._send.send(item)

    async def get(self) -> OutboundItem:
        """The next item for the writer. Raises ``trio.EndOfChannel`` once closed and empty."""
        item = await self._receive.receive()
        if isinstance(item, OutputEvent):
            self.output_bytes -= len(item.chunk)
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
