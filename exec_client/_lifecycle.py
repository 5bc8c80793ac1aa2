"""One lifecycle per object: a state enum, one transition table, an error naming the illegal move.

``Lifecycle`` holds the current state of one object (the client's session, one process
handle) and is the only place where it changes; the owner's docstring carries the table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A move the owner's transition table does not allow (a client bug, never a server input)."""


class Lifecycle(Generic[S]):
    """The state of ``owner`` and its transition table ``{state: {allowed next states}}``.

    ``on_change`` runs after every transition (e.g. to wake tasks waiting on the state).
    """

    def __init__(
        self,
        owner: str,
        initial: S,
        table: Mapping[S, frozenset[S]],
        on_change: Callable[[S, S], None] | None = None,
    ) -> None:
        self._owner = owner
        self._state = initial
        self._table = table
        self._on_change = on_change

    @property
    def state(self) -> S:
        return self._state

    def move(self, new: S) -> None:
        """Go to ``new``. Raises ``IllegalTransition`` naming both states if not allowed."""
        old = self._state
        if new not in self._table.get(old, frozenset()):
            raise IllegalTransition(f"{self._owner}: illegal transition {old.name} -> {new.name}")
        self._state = new
        if self._on_change is not None:
            self._on_change(old, new)
