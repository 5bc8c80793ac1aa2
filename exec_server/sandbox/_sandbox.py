"""The sandbox as the server sees it: capabilities, policy resolution, launch plans, denials."""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import trio

from protocol import ResourceLimits, SandboxMode, SandboxPolicy
from protocol._messages import DEFAULT_READ_ONLY_SUBPATHS

from .. import _tempdir
from . import _ceilings
from ._denials import DenialMonitor, DenialReport
from ._errors import SandboxUnavailable
from ._kernel import KernelSupport, detect
from ._launcher import Launcher, find_launcher, self_test
from ._limits import CommandLimits, ResourceLimiter
from ._netns import SHARED_NETNS_MIN_ABI, open_empty_netns
from ._plan import NO_CLEANUP, LaunchPlan, Masks, TerminalRequest, launcher_args
from ._policy import LANDLOCK_LOG_ABI, MAX_LAUNCHER_PATHS, check_enforceable, writable_paths
from ._settings import SandboxSettings

SANDBOX_TYPE_LANDLOCK = "landlock"
SANDBOX_TYPE_NONE = "none"
_MASK_PREFIX = "exec-server-masks-"
# What the launcher's own environment keeps of the command's: the tree marker
# (``exec_server._tree.TREE_MARKER_VAR``), so the init of a tree that outlived its command
# is still found by it. Nothing else: the dynamic loader of a dynamically linked launcher
# would honour LD_PRELOAD & co.
LAUNCHER_ENV_KEYS: Final = ("EXEC_SERVER_TREE",)
_MEMFD_NAME: Final = "exec-server-env"


def _launcher_args(
    settings: SandboxSettings,
    kernel: KernelSupport,
    policy: SandboxPolicy,
    writable: tuple[str, ...],
    netns_fd: int | None,
    *,
    read_only: tuple[str, ...] = (),
    masks: Masks | None = None,
    env_fd: int | None = None,
) -> list[str]:
    return launcher_args(
        landlock_abi=kernel.landlock_abi,
        mode=policy.mode,
        writable=writable,
        read_only=read_only,
        masks=masks,
        network=policy.network,
        netns_fd=netns_fd,
        env_fd=env_fd,
        # Only worth it when someone reads the records; the flag itself is harmless.
        log_new_exec=kernel.landlock_abi >= LANDLOCK_LOG_ABI and settings.audit_denials != "off",
    )


def _env_memfd(env: dict[str, str]) -> int:
    """The command's environment as ``NAME=value\\0``..., in a sealed-by-convention memfd."""
    fd = os.memfd_create(_MEMFD_NAME, os.MFD_CLOEXEC)
    try:
        data = b"".join(os.fsencode(key) + b"=" + os.fsencode(value) + b"\0" for key, value in env.items())
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_placeholders() -> tuple[str, Masks]:
    """A private directory holding an empty file and an empty directory, both mode 000.

    Bound over a masked path, they read as "Permission denied" to a command with no
    capabilities, root included (no CAP_DAC_OVERRIDE), and cannot be chmodded back (the
    view is read-only). The directory's name carries our pid, so that the leftovers of a
    server that was killed are removed by the next one.
    """
    _remove_stale_placeholders()
    base = tempfile.mkdtemp(prefix=f"{_MASK_PREFIX}{os.getpid()}-")
    file = os.path.join(base, "file")
    directory = os.path.join(base, "dir")
    os.close(os.open(file, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0))
    os.mkdir(directory, 0)
    os.chmod(file, 0)
    os.chmod(directory, 0)
    return base, Masks(paths=(), file=file, directory=directory)


def _remove_stale_placeholders() -> None:
    temp = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(temp) if n.startswith(_MASK_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_MASK_PREFIX) :].split("-", 1)[0]
        path = os.path.join(temp, name)
        try:
            if not pid.isdigit() or os.lstat(path).st_uid != os.geteuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_placeholders(path)  # its server is gone
        except OSError:
            continue


def _remove_placeholders(base: str) -> None:
    _tempdir.remove_tree(base)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _carve_outs(policy: SandboxPolicy, roots: Iterable[str]) -> tuple[str, ...]:
    """The existing read-only subpaths of each writable root (resolved, deduplicated)."""
    subpaths = DEFAULT_READ_ONLY_SUBPATHS if policy.read_only_subpaths is None else policy.read_only_subpaths
    found: list[str] = []
    for root in roots:
        for sub in subpaths:
            path = os.path.realpath(os.path.join(root, sub))
            # A symlink out of the root points at something read-only already.
            if _is_within(path, root) and path != root and os.path.lexists(path) and path not in found:
                found.append(path)
    if len(found) > MAX_LAUNCHER_PATHS:
        raise SandboxUnavailable(f"too many readOnlySubpaths found (at most {MAX_LAUNCHER_PATHS})")
    return tuple(found)


def _temp_dir_cleanup(path: str) -> Callable[[], None]:
    def cleanup() -> None:
        # Blocking, bounded, never raises (see _tempdir.py): the process core runs it in a thread.
        _tempdir.remove_tree(path)

    return cleanup


def _both(cleanup: Callable[[], None], limits: CommandLimits) -> Callable[[], None]:
    def both() -> None:
        try:
            cleanup()
        finally:
            limits.close()

    return both


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
        pid_namespace: whether unsandboxed (mode ``none``) commands run through the
            launcher too, as the init of their own PID namespace (root servers).
    """

    def __init__(
        self,
        settings: SandboxSettings,
        kernel: KernelSupport,
        launcher: Launcher | None,
        *,
        unavailable_reason: str | None = None,
        netns_fd: int | None = None,
        pid_namespace: bool = False,
    ) -> None:
        self.settings = settings
        self.kernel = kernel
        self._launcher = launcher
        if launcher is None and unavailable_reason is None:
            unavailable_reason = "no sandbox launcher"
        self.unavailable_reason = unavailable_reason
        self._netns_fd = netns_fd
        self._pid_namespace = pid_namespace and launcher is not None
        base, placeholders = _make_placeholders()
        self._release_placeholders = weakref.finalize(self, _remove_placeholders, base)
        self._mask_paths = tuple(dict.fromkeys(os.path.realpath(p) for p in settings.masked_paths))
        self._placeholders = placeholders
        # Closed when the server's run() ends, or when this object goes away unrun.
        self._release_netns = weakref.finalize(self, os.close, netns_fd) if netns_fd is not None else None
        self._monitor = DenialMonitor(settings.audit_denials, landlock_abi=kernel.landlock_abi)
        self._limits = ResourceLimiter.create(settings.limits)

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
        # Unsandboxed commands get a PID namespace too when the server is root: a non-root
        # server would need a user namespace for it, and that changes what setuid
        # programs (sudo) do in a command that asked for no sandbox at all.
        none = SandboxPolicy(mode=SandboxMode.NONE)
        pid_namespace = kernel.root and self_test(launcher, _launcher_args(settings, kernel, none, (), None)) is None
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
            problem = self_test(launcher, _launcher_args(settings, kernel, probe, (), netns_fd), netns_fd)
            if problem is None:
                if network:  # the static checks were optimistic about isolation
                    kernel = attrs.evolve(kernel, network_namespace=False)
                    if netns_fd is not None:
                        os.close(netns_fd)
                        netns_fd = None
                return cls(settings, kernel, launcher, netns_fd=netns_fd, pid_namespace=pid_namespace)
            reason = problem
        if netns_fd is not None:
            os.close(netns_fd)
        return cls(settings, kernel, launcher, unavailable_reason=reason, pid_namespace=pid_namespace)

    # -- what the server reports -------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether sandboxed (readOnly / workspaceWrite) requests can run at all."""
        return self.unavailable_reason is None

    @property
    def terminals_available(self) -> bool:
        """Whether ``tty: true`` commands can start: the launcher allocates their terminal."""
        return self._launcher is not None

    def capabilities(self) -> dict[str, Any]:
        """The ``capabilities.sandbox`` object of the ``initialize`` result (JSON-able)."""
        modes = [SandboxMode.READ_ONLY.value, SandboxMode.WORKSPACE_WRITE.value] if self.available else []
        if self.settings.allow_unsandboxed:
            modes.append(SandboxMode.NONE.value)
        ceiling = _ceilings.MODE_RANK[self.settings.max_mode]
        modes = [mode for mode in modes if _ceilings.MODE_RANK[SandboxMode(mode)] <= ceiling]
        network_isolation = self.available and self._enforceable(SandboxPolicy(mode=SandboxMode.READ_ONLY))
        caps: dict[str, Any] = {
            "available": self.available,
            "types": [SANDBOX_TYPE_LANDLOCK] if self.available else [],
            "modes": modes,
            "defaultMode": self.settings.default_mode.value,
            "network": network_isolation,
            "landlockAbi": self.kernel.landlock_abi,
            "denialSource": self._monitor.source,
            "runAs": "server-uid",
            "networkNamespace": "shared-empty" if self._netns_fd is not None else "per-process",
            "pidNamespace": "every-command" if self._pid_namespace else "sandboxed-commands",
        }
        if self.unavailable_reason is not None:
            caps["reason"] = self.unavailable_reason
        caps.update(self._limits.capabilities())
        settings = self.settings
        caps.update(_ceilings.capabilities(settings.max_mode, settings.allow_network, settings.writable_roots_within))
        return caps

    def _enforceable(self, policy: SandboxPolicy) -> bool:
        try:
            check_enforceable(policy, self.kernel)
        except SandboxUnavailable:
            return False
        return True

    # -- per request ---------------------------------------------------------------------

    def resolve(self, requested: SandboxPolicy | None, *, max_mode: SandboxMode | None = None) -> SandboxPolicy:
        """The policy a request runs under: its own, or the operator's default.

        Args:
            requested: the request's policy, None for the default.
            max_mode: a narrower ceiling of the caller's (a per-token one), on top of
                ``--max-sandbox``.

        Raises:
            SandboxUnavailable: mode ``none`` on a server without ``--allow-unsandboxed``,
                or a request beyond a ceiling (``_ceilings.py``; the message names it).
        """
        policy = requested if requested is not None else SandboxPolicy(mode=self.settings.default_mode)
        if policy.mode is SandboxMode.NONE and not self.settings.allow_unsandboxed:
            raise SandboxUnavailable('mode "none" is not allowed on this server (see --allow-unsandboxed)')
        _ceilings.check_mode(policy.mode, self.settings.max_mode, max_mode)
        _ceilings.check_network(policy, self.settings.allow_network)
        return policy

    def prepare(
        self,
        policy: SandboxPolicy,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        *,
        limits: ResourceLimits | None = None,
        terminal: TerminalRequest | None = None,
    ) -> LaunchPlan:
        """Build the launch plan for ``argv`` under ``policy``.

        Under ``workspaceWrite`` this creates the command's private temp dir and points
        ``TMPDIR``/``TMP``/``TEMP`` at it. Through the launcher, the command's environment
        goes into a memfd the plan passes on. ``limits`` (the request's) are resolved against
        the operator's ceilings (``_limits.py``). The plan's ``cleanup`` releases all three.
        With ``terminal`` the command always goes through the launcher (it allocates the
        pseudo-terminal; ``--limits-only`` when there is no PID namespace): in the view for
        a sandboxed command, so the pty is one of the view's own devpts instance.

        Raises:
            SandboxUnavailable: the policy or a limit cannot be enforced, or a request is
                beyond a ceiling (nothing was started).
        """
        resolved_limits = self._limits.resolve(limits)
        if policy.mode is SandboxMode.NONE:
            if not self.settings.allow_unsandboxed:
                raise SandboxUnavailable('mode "none" is not allowed on this server (see --allow-unsandboxed)')
            if not self._pid_namespace:
                if resolved_limits == ResourceLimits() and terminal is None:
                    return LaunchPlan(
                        list(argv), dict(env), (), SANDBOX_TYPE_NONE, policy=policy, cwd=cwd, command_env=dict(env)
                    )
                return self._limits_only(policy, argv, cwd, env, resolved_limits, terminal)
            none_limits = self._limits.prepare(resolved_limits)
            return self._through_launcher(
                policy, argv, cwd, env, (), (), None, NO_CLEANUP, SANDBOX_TYPE_NONE, limits=none_limits, terminal=terminal
            )
        if self.unavailable_reason is not None:
            raise SandboxUnavailable(self.unavailable_reason)
        check_enforceable(policy, self.kernel)
        if not os.path.isabs(cwd) or not os.path.isdir(cwd):
            raise SandboxUnavailable(f"cwd is not an existing absolute directory: {cwd!r}")
        writable = writable_paths(policy, cwd)
        _ceilings.check_within(writable, self.settings.writable_roots_within)
        read_only = _carve_outs(policy, writable)
        env = dict(env)
        cleanup: Callable[[], None] = NO_CLEANUP
        if policy.mode is SandboxMode.WORKSPACE_WRITE:
            temp = tempfile.mkdtemp(prefix=_tempdir.private_dir_prefix())
            cleanup = _temp_dir_cleanup(temp)
            writable = (*writable, temp)
            env.update(TMPDIR=temp, TMP=temp, TEMP=temp)
        # A masked directory that holds the cwd or a writable root would hide the workspace.
        real_cwd = os.path.realpath(cwd)
        masks = attrs.evolve(
            self._placeholders,
            paths=tuple(
                m for m in self._mask_paths if not any(_is_within(w, m) for w in (real_cwd, *writable))
            ),
        )
        netns_fd = None if policy.network else self._netns_fd
        try:
            command_limits = self._limits.prepare(resolved_limits)
        except SandboxUnavailable:
            cleanup()
            raise
        return self._through_launcher(
            policy,
            argv,
            cwd,
            env,
            writable,
            read_only,
            masks,
            cleanup,
            SANDBOX_TYPE_LANDLOCK,
            netns_fd=netns_fd,
            limits=command_limits,
            terminal=terminal,
        )

    def _limits_only(
        self,
        policy: SandboxPolicy,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        limits: ResourceLimits,
        terminal: TerminalRequest | None,
    ) -> LaunchPlan:
        """An unsandboxed command with limits or a terminal where there is no PID namespace
        (a non-root server): the launcher applies them and execs, nothing more."""
        if self._launcher is None:
            what = "a terminal (tty: true)" if terminal is not None else "limits"
            raise SandboxUnavailable(f"{what} of an unsandboxed command need the sandbox launcher; there is none")
        none_limits = self._limits.prepare(limits)
        pty_args = terminal.launcher_args() if terminal is not None else []
        return LaunchPlan(
            [self._launcher.path, *pty_args, *none_limits.launcher_args, "--limits-only", "--", *argv],
            dict(env),
            (terminal.fd,) if terminal is not None else (),
            SANDBOX_TYPE_NONE,
            cleanup=none_limits.close,
            policy=policy,
            cwd=cwd,
            command_env=dict(env),
            limits=none_limits,
        )

    def _through_launcher(
        self,
        policy: SandboxPolicy,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        writable: tuple[str, ...],
        read_only: tuple[str, ...],
        masks: Masks | None,
        cleanup: Callable[[], None],
        sandbox_type: str,
        *,
        netns_fd: int | None = None,
        limits: CommandLimits,
        terminal: TerminalRequest | None = None,
    ) -> LaunchPlan:
        assert self._launcher is not None  # available / pid_namespace imply a launcher
        cleanup = _both(cleanup, limits)
        try:
            env_fd = _env_memfd(env)
        except OSError as exc:
            cleanup()
            raise SandboxUnavailable(f"cannot hand the environment to the launcher: {exc}") from None

        open_fds = [env_fd]

        def release() -> None:
            # Idempotent: the fd number is closed once (a second close could hit a reused fd).
            while open_fds:
                os.close(open_fds.pop())
            cleanup()

        policy_args = _launcher_args(
            self.settings, self.kernel, policy, writable, netns_fd, read_only=read_only, masks=masks, env_fd=env_fd
        )
        pass_fds = (env_fd,) if netns_fd is None else (env_fd, netns_fd)
        pty_args: list[str] = []
        if terminal is not None:
            pass_fds = (*pass_fds, terminal.fd)
            pty_args = terminal.launcher_args()
        # The pty flags, then the limit flags come first: the launcher takes them out before
        # anything else.
        return LaunchPlan(
            [self._launcher.path, *pty_args, *limits.launcher_args, *policy_args, "--", *argv],
            {key: env[key] for key in LAUNCHER_ENV_KEYS if key in env},
            pass_fds,
            sandbox_type,
            cleanup=release,
            policy=policy,
            cwd=cwd,
            writable_roots=writable,
            read_only_subpaths=read_only,
            command_env=env,
            limits=limits,
        )

    # -- the server's long-lived task and the per-process report ---------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the denial monitor (audit reader) until cancelled; restores host state on exit.

        On exit it also releases the shared network namespace; a later ``prepare`` falls
        back to a namespace per command (still sandboxed).
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._limits.run)  # removes command cgroups that were busy
                await self._monitor.run(task_status=task_status)
        finally:
            self._netns_fd = None
            if self._release_netns is not None:
                self._release_netns()
            self._limits.close()

    def sweep_leftovers(self) -> bool:
        """Retry removing what closed commands left busy (their cgroups); True when nothing is left."""
        return self._limits.sweep()

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
            read_only_subpaths=plan.read_only_subpaths,
        )
