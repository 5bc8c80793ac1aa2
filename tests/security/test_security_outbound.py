"""The outbound queue is bounded by bytes for every kind of message, not only for output."""

from __future__ import annotations

import trio
import trio.testing

from exec_server._outbound import EVENT_BYTES, OutboundQueue
from protocol import ClosedEvent


async def test_answers_wait_for_room_in_bytes() -> None:
    queue = OutboundQueue(max_messages=100, max_output_bytes=10, max_bytes=10)
    with trio.fail_after(5):
        await queue.put("a" * 8)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.put, "b" * 8)
            await trio.testing.wait_all_tasks_blocked()
            assert queue.queued_bytes == 8  # the second answer waits: 16 bytes would not fit
            assert await queue.get() == "a" * 8
        assert queue.queued_bytes == 8
        assert await queue.get() == "b" * 8
        assert queue.queued_bytes == 0
        # One item larger than the bound still goes through alone.
        await queue.put("c" * 50)
        assert await queue.get() == "c" * 50


async def test_a_made_answer_is_built_only_once_there_is_room() -> None:
    queue = OutboundQueue(max_messages=100, max_output_bytes=1000, max_bytes=1000)
    built: list[int] = []

    def make(index: int) -> str:
        built.append(index)
        return "r" * 600

    with trio.fail_after(5):
        await queue.put("x" * 600)
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(queue.put_made, 600, lambda index=index: make(index))
                await trio.testing.wait_all_tasks_blocked()
            assert built == []  # nothing built while the queue is full
            for expected in ([0], [0, 1], [0, 1, 2]):
                await queue.get()
                await trio.testing.wait_all_tasks_blocked()
                assert built == expected  # one at a time, in arrival order
        assert await queue.get() == "r" * 600
        await queue.put(ClosedEvent(process_id="p", seq=1))  # events are charged too
        assert queue.queued_bytes == EVENT_BYTES


async def test_an_abandoned_queue_releases_made_answers_unbuilt() -> None:
    queue = OutboundQueue(max_messages=100, max_output_bytes=10, max_bytes=10)
    with trio.fail_after(5):
        await queue.put("a" * 10)
        failures: list[type[BaseException]] = []

        async def waiter() -> None:
            try:
                await queue.put_made(10, lambda: "never")
            except trio.BrokenResourceError as exc:
                failures.append(type(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            queue.abandon()
        assert failures == [trio.BrokenResourceError]
