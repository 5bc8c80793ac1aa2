"""The sandbox as the server sees it: capabilities, policy resolution, launch plans, denials."""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Callable
from typing import Any

import attrs
import trio

from protocol import SandboxMode, SandboxPolicy

from .. import _tempdir
from ._denials import DenialMonitor, DenialReport
from ._errors import SandboxUnavailable
from ._identity import Identity, choose_identity
from ._kernel import KernelSupport, detect
from ._launcher import Launcher, find_launcher, self_test
from ._netns import SHARED_NETNS_MIN_ABI, open_empty_netns
from ._plan import NO_CLEANUP, LaunchPlan, launcher_args
from ._policy import LANDLOCK_LOG_ABI, check_enforceable, writable_paths
from ._settings import SandboxSettings

SANDBOX_TYPE_LANDLOCK = "landlock"
SANDBOX_TYPE_NONE = "none"


def _fallback_identity(settings: SandboxSettings) -> Identity:
    return Identity(settings.fallback_uid, settings.fallback_gid)


def _launcher_args(
    settings: SandboxSettings,
    kernel: KernelSupport,
    policy: SandboxPolicy,
    writable: tuple[str, ...],
    identity: Identity | None,
    netns_fd: int | None,
) -> list[str]:
    return launcher_args(
        landlock_abi=kernel.landlock_abi,
        mode=policy.mode,
        writable=writable,
        network=policy.network,
        netns_fd=netns_fd,
        identity=identity,
        # Only worth it when someone reads the records; the flag itself is harmless.
        log_new_exec=kernel.landlock_abi >= LANDLOCK_LOG_ABI and settings.audit_denials != "off",
    )


def _temp_dir_cleanup(path: str) -> Callable[[], None]:
    def cleanup() -> None:
        # Blocking, bounded, never raises (see _tempdir.py): the process core runs it in a thread.
        _tempdir.remove_tree(path)

    return cleanup


class Sandbox:
    """Turns a request's sandbox policy into a launch plan the kernel enforces.

    Build one with :meth:`create`. The constructor takes the already-detected pieces.

    Args:
        settings: the operator's configuration.
        kernel: what the kernel and this process can enforce.
        launcher: the launcher binary, or None when there is none (nothing sandboxed runs).
        unavailable_reason: why sandboxed requests are refused, if they are.
        netns_fd: an empty network namespace for commands to join (root servers; see
            ``_netns.py``), or None to create one per command.
    """

    def __init__(
        self,
        settings: SandboxSettings,
        kernel: KernelSupport,
        launcher: Launcher | None,
        *,
        unavailable_reason: str | None = None,
        netns_fd: int | None = None,
    ) -> None:
        self.settings = settings
        self.kernel = kernel
        self._launcher = launcher
        if launcher is None and unavailable_reason is None:
            unavailable_reason = "no sandbox launcher"
        self.unavailable_reason = unavailable_reason
        self._fallback = _fallback_identity(settings)
        self._netns_fd = netns_fd
        # Closed when the server's run() ends, or when this object goes away unrun.
        self._release_netns = weakref.finalize(self, os.close, netns_fd) if netns_fd is not None else None
        self._monitor = DenialMonitor(settings.audit_denials, landlock_abi=kernel.landlock_abi)

    @classmethod
    def create(cls, settings: SandboxSettings) -> Sandbox:
        """Detect kernel support, find (or build) the launcher and self-test it once.

        A failed self-test makes sandboxed requests fail with -32006; it never makes
        them run unsandboxed. If only network isolation fails (a container that forbids
        ``unshare``), policies with ``network: true`` stay available.

        Raises:
            AuditUnavailable: ``audit_denials="on"`` but audit records cannot exist here.
        """
        kernel = detect()
        try:
            launcher = find_launcher()
        except SandboxUnavailable as exc:
            return cls(settings, kernel, None, unavailable_reason=str(exc))
        netns_fd: int | None = None
        if kernel.root and kernel.network_namespace and kernel.landlock_abi >= SHARED_NETNS_MIN_ABI:
            try:
                netns_fd = open_empty_netns(launcher)
            except SandboxUnavailable:
                pass  # the self-test below decides whether per-command namespaces work
        reason = "unreachable"
        for network in (False, True):
            probe = SandboxPolicy(mode=SandboxMode.READ_ONLY, network=network)
            try:
                check_enforceable(probe, kernel)
            except SandboxUnavailable as exc:
                reason = str(exc)
                continue
            identity = choose_identity("/", root=kernel.root, fallback=_fallback_identity(settings))
            problem = self_test(launcher, _launcher_args(settings, kernel, probe, (), identity, netns_fd), netns_fd)
            if problem is None:
                if network:  # the static checks were optimistic about isolation
                    kernel = attrs.evolve(kernel, network_namespace=False)
                    if netns_fd is not None:
                        os.close(netns_fd)
                        netns_fd = None
                return cls(settings, kernel, launcher, netns_fd=netns_fd)
            reason = problem
        if netns_fd is not None:
            os.close(netns_fd)
        return cls(settings, kernel, launcher, unavailable_reason=reason)

    # -- what the server reports -------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether sandboxed (readOnly / workspaceWrite) requests can run at all."""
        return self.unavailable_reason is None

    def capabilities(self) -> dict[str, Any]:
        """The ``capabilities.sandbox`` object of the ``initialize`` result (JSON-able)."""
        modes = [SandboxMode.READ_ONLY.value, SandboxMode.WORKSPACE_WRITE.value] if self.available else []
        if self.settings.allow_unsandboxed:
            modes.append(SandboxMode.NONE.value)
        network_isolation = self.available and self._enforceable(SandboxPolicy(mode=SandboxMode.READ_ONLY))
        caps: dict[str, Any] = {
            "available": self.available,
            "types": [SANDBOX_TYPE_LANDLOCK] if self.available else [],
            "modes": modes,
            "defaultMode": self.settings.default_mode.value,
            "network": network_isolation,
            "landlockAbi": self.kernel.landlock_abi,
            "denialSource": self._monitor.source,
            "runAs": "unprivileged-uid" if self.kernel.root else "server-uid",
            "networkNamespace": "shared-empty" if self._netns_fd is not None else "per-process",
        }
        if self.unavailable_reason is not None:
            caps["reason"] = self.unavailable_reason
        return caps

    def _enforceable(self, policy: SandboxPolicy) -> bool:
        try:
            check_enforceable(policy, self.kernel)
        except SandboxUnavailable:
            return False
        return True

    # -- per request ---------------------------------------------------------------------

    def resolve(self, requested: SandboxPolicy | None) -> SandboxPolicy:
        """The policy a request runs under: its own, or the operator's default.

        Raises:
            SandboxUnavailable: mode ``none`` on a server without ``--allow-unsandboxed``.
        """
        policy = requested if requested is not None else SandboxPolicy(mode=self.settings.default_mode)
        if policy.mode is SandboxMode.NONE and not self.settings.allow_unsandboxed:
            raise SandboxUnavailable('mode "none" is not allowed on this server (see --allow-unsandboxed)')
        return policy

    def prepare(self, policy: SandboxPolicy, argv: list[str], cwd: str, env: dict[str, str]) -> LaunchPlan:
        """Build the launch plan for ``argv`` under ``policy``.

        Under ``workspaceWrite`` this creates the command's private temp dir (owned by the
        uid it will run as) and points ``TMPDIR``/``TMP``/``TEMP`` at it; the plan's
        ``cleanup`` removes it.

        Raises:
            SandboxUnavailable: the policy cannot be enforced here (nothing was started).
        """
        if policy.mode is SandboxMode.NONE:
            if not self.settings.allow_unsandboxed:
                raise SandboxUnavailable('mode "none" is not allowed on this server (see --allow-unsandboxed)')
            return LaunchPlan(list(argv), dict(env), (), SANDBOX_TYPE_NONE, policy=policy, cwd=cwd)
        if self.unavailable_reason is not None:
            raise SandboxUnavailable(self.unavailable_reason)
        check_enforceable(policy, self.kernel)
        if not os.path.isabs(cwd) or not os.path.isdir(cwd):
            raise SandboxUnavailable(f"cwd is not an existing absolute directory: {cwd!r}")
        writable = writable_paths(policy, cwd)
        identity = choose_identity(
            cwd, root=self.kernel.root, fallback=self._fallback, workspace_owner=self.settings.run_as_workspace_owner
        )
        env = dict(env)
        cleanup: Callable[[], None] = NO_CLEANUP
        if policy.mode is SandboxMode.WORKSPACE_WRITE:
            temp = tempfile.mkdtemp(prefix=_tempdir.private_dir_prefix())
            cleanup = _temp_dir_cleanup(temp)
            try:
                if identity is not None:
                    os.chown(temp, identity.uid, identity.gid)
            except OSError as exc:
                cleanup()
                raise SandboxUnavailable(f"cannot hand the private temp dir to uid {identity.uid}: {exc}") from None
            writable = (*writable, temp)
            env.update(TMPDIR=temp, TMP=temp, TEMP=temp)
        assert self._launcher is not None  # available implies a launcher
        netns_fd = None if policy.network else self._netns_fd
        policy_args = _launcher_args(self.settings, self.kernel, policy, writable, identity, netns_fd)
        full_argv = [self._launcher.path, *policy_args, "--", *argv]
        return LaunchPlan(
            full_argv,
            env,
            () if netns_fd is None else (netns_fd,),
            SANDBOX_TYPE_LANDLOCK,
            cleanup=cleanup,
            policy=policy,
            cwd=cwd,
            writable_roots=writable,
        )

    # -- the server's long-lived task and the per-process report ---------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the denial monitor (audit reader) until cancelled; restores host state on exit.

        On exit it also releases the shared network namespace; a later ``prepare`` falls
        back to a namespace per command (still sandboxed).
        """
        try:
            await self._monitor.run(task_status=task_status)
        finally:
            self._netns_fd = None
            if self._release_netns is not None:
                self._release_netns()

    async def denial_report(
        self, plan: LaunchPlan, pid: int, exit_code: int, stdout_tail: bytes, stderr_tail: bytes
    ) -> DenialReport:
        """Whether the reaped process ``pid`` (and its descendants) hit a sandbox denial.

        Delegates to the denial monitor (``_denials.py``): audit records when available,
        else the stderr heuristic; ``source: "none"`` for unsandboxed plans.
        """
        return await self._monitor.report_denials(
            plan.policy,
            pid,
            exit_code,
            stdout_tail,
            stderr_tail,
            cwd=plan.cwd,
            writable_roots=plan.writable_roots,
        )
