"""Explicit lifecycles: a state enum, one table of allowed moves, an error naming an illegal one.

Every long-lived object of the server (``Server``, ``Connection``, ``Session``,
``ManagedProcess``) holds one ``Lifecycle``. Its state changes only through ``move``, in
one place per object, so a state that should be impossible raises ``IllegalTransition``
naming the object and the move instead of silently becoming some mix of flags. Waiting
for a state is a condition on the current state (``wait_for``), never a latched event.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from typing import Generic, TypeVar

import trio

__all__ = ["IllegalTransition", "Lifecycle"]

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A move the object's state table does not allow (a bug in the caller, never input)."""


class Lifecycle(Generic[S]):
    """The state of one object and the moves its table allows.

    Args:
        name: names the object in errors (``"session abc"``).
        initial: the first state.
        allowed: every ``(from, to)`` pair that is a legal move.
    """

    def __init__(self, name: str, initial: S, allowed: Iterable[tuple[S, S]]) -> None:
        self._name = name
        self._state = initial
        self._allowed = frozenset(allowed)
        self._changed = trio.Event()

    @property
    def state(self) -> S:
        return self._state

    def is_in(self, states: Collection[S]) -> bool:
        return self._state in states

    def move(self, new: S) -> None:
        """Move to ``new``. Raises ``IllegalTransition`` if the table does not allow it."""
        if (self._state, new) not in self._allowed:
            raise IllegalTransition(f"{self._name}: {self._state.value} -> {new.value}")
        self._state = new
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_for(self, states: Collection[S]) -> None:
        """Return once the state is one of ``states`` (at once if it already is)."""
        while self._state not in states:
            await self._changed.wait()
