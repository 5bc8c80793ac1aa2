"""Resource limits per command: the operator's ceilings, the kernel mechanism for each, and which was hit.

A request's ``limits`` (``protocol.ResourceLimits``) are checked against the operator's
``--limit-*`` values, which are both the default (a request that names no value gets it) and
the ceiling (a request above it is refused with -32006 naming the flag, never lowered).
Each limit is enforced by the kernel, or the request is refused (fail closed):

=================  =======================  =====================================================
limit              mechanism                how a hit is known (``limitExceeded``)
=================  =======================  =====================================================
``memoryBytes``    cgroup memory limit      the cgroup's OOM-kill counter (``"memory"``)
``pids``           cgroup ``pids.max``      the cgroup's refused-fork counter (``"pids"``)
``cpuSeconds``     ``RLIMIT_CPU``           killed by SIGXCPU, or by SIGKILL (the hard limit,
                                            soft + 1 s) past the soft limit's CPU (``"cpu"``)
``fileSizeBytes``  ``RLIMIT_FSIZE``         killed by SIGXFSZ (``"fileSize"``)
``openFiles``      ``RLIMIT_NOFILE``        not reported: EMFILE is an ordinary error
=================  =======================  =====================================================

Memory and pids need a cgroup (``_cgroup.py`` says why not ``RLIMIT_AS``/``RLIMIT_NPROC``);
without one they are not enforceable and ``initialize`` does not list them. rlimits are per
process: every process of the command gets ``cpuSeconds`` of CPU and may write files up to
``fileSizeBytes``. Signals are only evidence when the process that ended the command died of
them: a program that ignores SIGXFSZ (CPython does) gets EFBIG from ``write`` and no report.

The launcher applies all of them first, before namespaces or forks (``launcher.c``); an
unsandboxed command with limits runs through the launcher too (``--limits-only``).
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any, Final

import attrs
import trio

from protocol import Denial, ResourceLimits, wire_name

from . import _cgroup
from ._errors import SandboxUnavailable

LIMIT_MEMORY: Final = "memory"
LIMIT_PIDS: Final = "pids"
LIMIT_CPU: Final = "cpu"
LIMIT_FILE_SIZE: Final = "fileSize"
# The order a record names them in when several were hit: the ones that kill first.
_REPORT_ORDER: Final = (LIMIT_MEMORY, LIMIT_CPU, LIMIT_FILE_SIZE, LIMIT_PIDS)
DENIAL_PREFIX: Final = "limit."
# RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL this much later for a command that catches it.
CPU_HARD_GRACE_S: Final = 1
FIELDS: Final = ("memory_bytes", "pids", "cpu_seconds", "file_size_bytes", "open_files")
FLAGS: Final = {
    "memory_bytes": "--limit-memory",
    "pids": "--limit-pids",
    "cpu_seconds": "--limit-cpu-seconds",
    "file_size_bytes": "--limit-file-size",
    "open_files": "--limit-open-files",
}
_CGROUP_CONTROLLER: Final = {"memory_bytes": _cgroup.MEMORY, "pids": _cgroup.PIDS}
_RLIMITS: Final = {
    "cpu_seconds": ("cpu", resource.RLIMIT_CPU),
    "file_size_bytes": ("fsize", resource.RLIMIT_FSIZE),
    "open_files": ("nofile", resource.RLIMIT_NOFILE),
}
NO_REQUEST: Final = ResourceLimits()
SWEEP_INTERVAL_S: Final = 1.0


def _hard_value(field: str, value: int) -> int:
    return value + CPU_HARD_GRACE_S if field == "cpu_seconds" else value


@attrs.frozen
class LimitVerdict:
    """Which limit a reaped command hit (``exceeded``) and every limit hit, as denials."""

    exceeded: str | None
    denials: tuple[Denial, ...]


NOTHING_HIT: Final = LimitVerdict(None, ())


class CommandLimits:
    """The limits one command runs under: the launcher's flags, and the cgroup that counts.

    Args:
        limits: the resolved limits.
        launcher_args: ``--cgroup``/``--rlimit`` flags for the launcher (first in its argv).
        cgroup: the command's cgroup, when memory or pids are limited.
    """

    def __init__(
        self, limits: ResourceLimits, launcher_args: tuple[str, ...], cgroup: _cgroup.CommandCgroup | None
    ) -> None:
        self.limits = limits
        self.launcher_args = launcher_args
        self._cgroup = cgroup

    def verdict(self, signum: int | None, cpu_seconds: float, *, timed_out: bool = False) -> LimitVerdict:
        """Which limits the kernel says the command hit.

        Args:
            signum: the signal that ended the command's process, None if it exited.
            cpu_seconds: its user + system CPU time (``wait4``).
            timed_out: the server killed it for ``timeoutMs`` (a SIGKILL that is not the
                CPU hard limit's).
        """
        limits = self.limits
        hit: dict[str, int] = {}
        if limits.memory_bytes is not None and self._cgroup is not None and self._cgroup.oom_kills(signum) > 0:
            hit[LIMIT_MEMORY] = limits.memory_bytes
        if limits.pids is not None and self._cgroup is not None and self._cgroup.fork_refusals() > 0:
            hit[LIMIT_PIDS] = limits.pids
        if limits.cpu_seconds is not None and (
            signum == signal.SIGXCPU
            # wait4's CPU time trails the runtime RLIMIT_CPU counts (by up to a fifth here):
            # past the soft limit is the evidence (a process running there got SIGXCPU, and the
            # hard limit's SIGKILL one second later is the only other kill that needs that much).
            or (signum == signal.SIGKILL and not timed_out and cpu_seconds >= limits.cpu_seconds)
        ):
            hit[LIMIT_CPU] = limits.cpu_seconds
        if limits.file_size_bytes is not None and signum == signal.SIGXFSZ:
            hit[LIMIT_FILE_SIZE] = limits.file_size_bytes
        if not hit:
            return NOTHING_HIT
        kinds = [kind for kind in _REPORT_ORDER if kind in hit]
        return LimitVerdict(
            kinds[0], tuple(Denial(blocker=DENIAL_PREFIX + kind, target=str(hit[kind])) for kind in kinds)
        )

    def close(self) -> None:
        """Remove the command's cgroup (killing what is left in it); idempotent."""
        if self._cgroup is not None:
            self._cgroup.close()


NO_LIMITS: Final = CommandLimits(NO_REQUEST, (), None)


def detect_cgroups() -> tuple[_cgroup.CgroupPool | None, dict[str, str]]:
    """Where per-command cgroups can be made (the detection seam tests replace)."""
    return _cgroup.detect()


class ResourceLimiter:
    """Resolves a request's limits against the operator's and prepares them per command.

    Build one with :meth:`create`.

    Args:
        ceilings: the operator's ``--limit-*`` values (defaults and ceilings at once).
        cgroups: where per-command cgroups go, or None when there is nowhere.
        problems: per cgroup controller that does not work, why not.
    """

    def __init__(
        self, ceilings: ResourceLimits, cgroups: _cgroup.CgroupPool | None, problems: dict[str, str]
    ) -> None:
        self.ceilings = ceilings
        self._cgroups = cgroups
        self._unenforceable: dict[str, str] = {}
        working = cgroups.controllers if cgroups is not None else frozenset()
        for field, controller in _CGROUP_CONTROLLER.items():
            if controller not in working:
                self._unenforceable[field] = problems.get(controller, f"no {controller} cgroup")

    @classmethod
    def create(cls, ceilings: ResourceLimits) -> ResourceLimiter:
        cgroups, problems = detect_cgroups()
        return cls(ceilings, cgroups, problems)

    @property
    def enforceable(self) -> tuple[str, ...]:
        """The wire names of the limits this server can enforce (``capabilities.sandbox.limits``)."""
        return tuple(wire_name(field) for field in FIELDS if field not in self._unenforceable)

    def capabilities(self) -> dict[str, Any]:
        caps: dict[str, Any] = {"limits": list(self.enforceable)}
        defaults = {wire_name(field): getattr(self.ceilings, field) for field in FIELDS}
        caps["limitCeilings"] = {name: value for name, value in defaults.items() if value is not None}
        return caps

    def resolve(self, requested: ResourceLimits | None) -> ResourceLimits:
        """The limits a command runs under: the request's, each within the operator's ceiling.

        Raises:
            SandboxUnavailable: a value above its ceiling (the flag is named), or a limit
                this host cannot enforce.
        """
        requested = requested or NO_REQUEST
        values: dict[str, int | None] = {}
        for field in FIELDS:
            asked: int | None = getattr(requested, field)
            ceiling: int | None = getattr(self.ceilings, field)
            if asked is not None and ceiling is not None and asked > ceiling:
                raise SandboxUnavailable(
                    f"limits.{wire_name(field)} {asked} is above this server's ceiling {ceiling} ({FLAGS[field]})"
                )
            value = asked if asked is not None else ceiling
            if value is not None:
                self._check_enforceable(field, value)
            values[field] = value
        return ResourceLimits(**values)

    def _check_enforceable(self, field: str, value: int) -> None:
        problem = self._unenforceable.get(field)
        if problem is not None:
            raise SandboxUnavailable(f"limits.{wire_name(field)} cannot be enforced here: {problem}")
        if field in _RLIMITS and os.geteuid() != 0:
            # Without CAP_SYS_RESOURCE an rlimit can only be lowered.
            _name, which = _RLIMITS[field]
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY and _hard_value(field, value) > hard:
                raise SandboxUnavailable(
                    f"limits.{wire_name(field)} {value} is above this server's own hard limit {hard}"
                )

    def prepare(self, limits: ResourceLimits) -> CommandLimits:
        """Create the command's cgroup and the launcher flags for ``limits`` (already resolved).

        Raises:
            SandboxUnavailable: the cgroup could not be made (nothing is left behind).
        """
        if limits == NO_REQUEST:
            return NO_LIMITS
        args: list[str] = []
        cgroup = None
        if limits.memory_bytes is not None or limits.pids is not None:
            if self._cgroups is None:  # resolve() refuses this first
                raise SandboxUnavailable("limits need a cgroup and there is none")
            try:
                cgroup = self._cgroups.create(limits.memory_bytes, limits.pids)
            except _cgroup.CgroupError as exc:
                raise SandboxUnavailable(str(exc)) from None
            for directory in cgroup.directories:
                args += ["--cgroup", directory]
        for field, (name, _which) in _RLIMITS.items():
            value = getattr(limits, field)
            if value is not None:
                args += ["--rlimit", f"{name}={value}:{_hard_value(field, value)}"]
        return CommandLimits(limits, tuple(args), cgroup)

    async def run(self) -> None:
        """Retry, until cancelled, removing command cgroups that were busy when their command closed.

        A killed member stays in the cgroup until its parent reaps it (for an orphan, the
        server's own reaper, once a second), so the removal is retried on that beat.
        """
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            if self._cgroups is not None:
                self._cgroups.sweep()

    def close(self) -> None:
        """Retry removing command cgroups that were still busy (at server exit)."""
        self.sweep()

    def sweep(self) -> bool:
        """Retry removing busy command cgroups now; True when none is left."""
        if self._cgroups is None:
            return True
        self._cgroups.sweep()
        return not self._cgroups.pending
