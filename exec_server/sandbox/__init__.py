"""The kernel-enforced sandbox: a read-only view of the host in namespaces of its own, Landlock, seccomp.

The server uses :class:`Sandbox`: ``create`` once, ``resolve`` + ``prepare`` per request,
``run`` as a long-lived task, ``denial_report`` after each reaped process. The policy is
applied by a small C launcher (``launcher.c``) that the server starts on CPython's vfork
path; the launcher forks the init of a new PID namespace and the command, and ends exactly as
the command does, so the pid the server waits for reports the command's exit.

What a sandboxed command gets:

- **Its own namespaces**: mount (the view below), PID (``ps`` shows only its tree; the init
  is PID 1 and killing it kills the tree), IPC (SysV IPC private to it, and a private writable
  ``/dev/shm`` for POSIX shared memory and semaphores; a ``/dev`` of its own with the memory
  devices, ``/dev/tty`` and a devpts instance of its own, so no host terminal or disk is
  reachable), and network
  (empty) unless the policy allows the network. Unsandboxed commands of a root server get the
  PID namespace too, for the tree.
- **Filesystem**: the host's tree read-only (bubblewrap's model, built in place with one
  recursive ``mount_setattr``); under ``workspaceWrite`` the ``cwd``, the ``writableRoots``
  and a private temp dir (``TMPDIR``, ``TMP``, ``TEMP``) read-write, with the
  ``readOnlySubpaths`` carve-outs (``.git``, ``.codex``, ``.agents`` by default) read-only
  again; the operator's masked paths (the server's token and config directory) covered by
  mode-000 placeholders; a ``/proc`` of its PID namespace. Landlock (every right of the
  running ABI; ABI 3 at least) applies on top.
- **Identity**: the server's uid and gid (root stays uid 0) with every capability dropped
  (all sets, the bounding set, ambient; securebits locked) and ``no_new_privs``. The view,
  not a uid drop, is what refuses chmod/chown/utimes/xattrs outside the writable roots.
- **Network off** (the default): an empty network namespace (its loopback down), a seccomp
  filter that refuses ``socket``/``socketpair`` for every family but AF_UNIX with EACCES and
  audits it, and Landlock refusing every TCP bind/connect (ABI 4), so that the refusal is
  audited with its destination. A root server keeps one empty namespace for all commands
  (``_netns.py``).
- **The environment** reaches only the command's final ``execve`` (a memfd, ``--env-fd``):
  ``LD_PRELOAD`` and friends of a request never reach a dynamically linked launcher.
- **Resource limits** (``_limits.py``, ``_cgroup.py``): memory and pids in a cgroup per
  command, CPU time, file size and open files as rlimits, applied by the launcher before
  anything else; the record's ``limitExceeded`` comes from the kernel's counters and signals.
- **Operator ceilings** (``_ceilings.py``): ``--max-sandbox``, ``--writable-roots-within``,
  ``--allow-network`` and the ``--limit-*`` values; a request beyond one is refused, never
  narrowed.
- **Fail closed**: what the kernel cannot enforce is refused with :class:`SandboxUnavailable`
  (-32006) before anything runs; if the launcher still cannot apply a policy it exits 125
  without executing the command.
"""

from ._audit import AuditUnavailable as AuditUnavailable
from ._denials import DenialMonitor as DenialMonitor, DenialReport as DenialReport
from ._errors import SandboxUnavailable as SandboxUnavailable
from ._kernel import KernelSupport as KernelSupport, detect as detect
from ._launcher import Launcher as Launcher, find_launcher as find_launcher
from ._limits import CommandLimits as CommandLimits, LimitVerdict as LimitVerdict, ResourceLimiter as ResourceLimiter
from ._plan import NO_CLEANUP as NO_CLEANUP, LaunchPlan as LaunchPlan, TerminalRequest as TerminalRequest
from ._sandbox import Sandbox as Sandbox
from ._settings import SandboxSettings as SandboxSettings
