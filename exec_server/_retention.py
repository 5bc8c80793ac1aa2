"""Retained output: what `process/read` repairs gaps from.

Each process keeps its output chunks (oldest evicted first) under a per-process byte cap;
a server-wide ``RetentionBudget`` caps the total across processes. Eviction is never
silent: ``retained_from_seq`` and the per-stream ``evicted_bytes`` tell a reader exactly
what is gone.
"""

from __future__ import annotations

import collections
from typing import Final

import attrs

from protocol import OutputChunk, Stream, StreamBytes

# A read never returns more than this much payload, whatever ``maxBytes`` says, so that a
# response stays well under the WebSocket message limit after base64 and JSON.
MAX_READ_BYTES: Final = 4 * 1024 * 1024
# Each retained chunk is charged this much on top of its payload, so that a flood of tiny
# chunks cannot hold far more memory than the cap says.
CHUNK_OVERHEAD_BYTES: Final = 128


class RetentionBudget:
    """The server-wide cap on retained bytes, shared by every ``RetainedOutput``."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.used_bytes = 0
        self._members: set[RetainedOutput] = set()

    def _register(self, member: RetainedOutput) -> None:
        self._members.add(member)

    def _unregister(self, member: RetainedOutput) -> None:
        self._members.discard(member)

    def _enforce(self) -> None:
        # The biggest retainer pays first: it is almost always the one that is flooding.
        while self.used_bytes > self.total_bytes:
            victim = max(self._members, key=lambda member: member.retained_bytes, default=None)
            if victim is None or victim.retained_bytes == 0:
                return
            victim._evict_oldest()


@attrs.define
class _Retained:
    seq: int
    stream: Stream
    data: bytes


class RetainedOutput:
    """The retained output of one process.

    Args:
        cap_bytes: per-process cap; the oldest chunks are evicted beyond it.
        budget: the server-wide budget this retention counts against.
    """

    def __init__(self, cap_bytes: int, budget: RetentionBudget) -> None:
        self.cap_bytes = cap_bytes
        self._budget = budget
        self._chunks: collections.deque[_Retained] = collections.deque()
        self.retained_bytes = 0
        self._evicted_through_seq = 0
        self._evicted = {Stream.STDOUT: 0, Stream.STDERR: 0, Stream.PTY: 0}
        budget._register(self)

    def append(self, seq: int, stream: Stream, data: bytes) -> None:
        self._chunks.append(_Retained(seq, stream, data))
        charge = len(data) + CHUNK_OVERHEAD_BYTES
        self.retained_bytes += charge
        self._budget.used_bytes += charge
        while self.retained_bytes > self.cap_bytes:
            self._evict_oldest()
        self._budget._enforce()

    def _evict_oldest(self) -> None:
        oldest = self._chunks.popleft()
        charge = len(oldest.data) + CHUNK_OVERHEAD_BYTES
        self.retained_bytes -= charge
        self._budget.used_bytes -= charge
        self._evicted[oldest.stream] += len(oldest.data)
        self._evicted_through_seq = oldest.seq

    @property
    def retained_from_seq(self) -> int:
        """The lowest seq still answerable: anything below it that was output is gone."""
        if self._chunks:
            return self._chunks[0].seq
        return self._evicted_through_seq + 1

    @property
    def evicted_bytes(self) -> StreamBytes:
        return StreamBytes(
            stdout=self._evicted[Stream.STDOUT], stderr=self._evicted[Stream.STDERR], pty=self._evicted[Stream.PTY]
        )

    @property
    def output_lost(self) -> bool:
        return self._evicted_through_seq > 0

    def read(self, after_seq: int, max_bytes: int | None) -> tuple[list[OutputChunk], bool]:
        """Chunks with ``seq > after_seq`` in order, at most ``max_bytes`` (the first always).

        Returns:
            The chunks, and whether the answer was cut short by the byte limit.
        """
        limit = min(max_bytes or MAX_READ_BYTES, MAX_READ_BYTES)
        chunks: list[OutputChunk] = []
        size = 0
        for item in self._chunks:  # usually short; a bisect would not pay for itself
            if item.seq <= after_seq:
                continue
            if chunks and size + len(item.data) > limit:
                return chunks, True
            chunks.append(OutputChunk(seq=item.seq, stream=item.stream, chunk=item.data))
            size += len(item.data)
        return chunks, False

    def release(self) -> None:
        """Free everything and leave the budget."""
        self._budget.used_bytes -= self.retained_bytes
        self.retained_bytes = 0
        self._chunks.clear()
        self._budget._unregister(self)
