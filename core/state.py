"""What one scheduler process keeps in memory, in one place.

Each app keeps its per-process state (the node snapshot, delivery caches, the job history
backlog, the HTTP rate limiters, ...) as a *part*: a class whose instance is created on first use
and lives until ``reset()``. Nothing else holds state in module globals, so a test starts from a
fresh process by calling ``STATE.reset()`` instead of poking at private names, and ``core``
needs to know none of the apps that keep parts here.

    @dataclass
    class Backlog:
        pending: dict[str, JobView] = field(default_factory=dict)

    STATE.part(Backlog).pending[job_id] = job
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class ProcessState:
    def __init__(self) -> None:
        self._parts: dict[type[Any], Any] = {}

    def part(self, kind: type[T]) -> T:
        """The process's instance of ``kind``, created (with no arguments) on first use."""
        found = self._parts.get(kind)
        if found is None:
            found = self._parts[kind] = kind()
        return found

    def reset(self) -> None:
        """Forget every part: the next ``part()`` call of each kind starts afresh (tests)."""
        self._parts.clear()


STATE = ProcessState()
