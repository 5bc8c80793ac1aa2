"""The kernel-enforced sandbox: Landlock, seccomp, an empty network namespace, no root.

The server uses :class:`Sandbox` (see ``notes/SANDBOX_INTERFACE.md``): ``create`` once,
``resolve`` + ``prepare`` per request, ``run`` as a long-lived task, ``denial_report``
after each reaped process. The policy is applied by a small C launcher (``launcher.c``)
that the server starts on CPython's vfork path and that execs the command, so the pid the
server sees is the command's.

What a sandboxed command gets:

- **Filesystem** (Landlock, every right of the running ABI): read/execute everywhere;
  write only ``/dev/{null,zero,full,random,urandom,tty}`` — and under ``workspaceWrite``
  everything beneath ``cwd``, the ``writableRoots`` and a private temp dir (``TMPDIR``,
  ``TMP``, ``TEMP``). ``/dev/shm`` is not writable (POSIX semaphores and shared memory
  fail). Landlock ABI 3 (truncate) is the minimum; below it every request gets -32006.
- **Network off** (the default): an empty network namespace (its loopback down), a
  seccomp filter that refuses ``socket``/``socketpair`` for every family but AF_UNIX with
  EACCES and audits it, and Landlock refusing every TCP bind/connect. TCP sockets of
  AF_INET/AF_INET6 may still be *created* when Landlock handles TCP (ABI 4): then the
  refusal of the ``connect`` comes from Landlock and its audit record names the
  destination (``net.connect_tcp 127.0.0.1:8080``), which is what exact denial reporting
  needs; the empty namespace remains the barrier either way. A root server keeps one empty
  namespace for all commands (``_netns.py``).
- **No root**: a root server's commands run as the workspace owner or ``nobody``, with no
  capabilities, an empty bounding set and locked securebits (``_identity.py`` says why a
  uid drop and not just dropping capabilities). ``no_new_privs`` always; the controlling
  terminal is given up; signals and abstract unix sockets are scoped to the command's own
  process tree (ABI 6).
- **Fail closed**: what the kernel cannot enforce is refused with :class:`SandboxUnavailable`
  (-32006) before anything runs; if the launcher still cannot apply a policy it exits 125
  without executing the command.
"""

from ._audit import AuditUnavailable as AuditUnavailable
from ._denials import DenialMonitor as DenialMonitor, DenialReport as DenialReport
from ._errors import SandboxUnavailable as SandboxUnavailable
from ._identity import Identity as Identity, choose_identity as choose_identity
from ._kernel import KernelSupport as KernelSupport, detect as detect
from ._launcher import Launcher as Launcher, find_launcher as find_launcher
from ._plan import NO_CLEANUP as NO_CLEANUP, LaunchPlan as LaunchPlan
from ._sandbox import Sandbox as Sandbox
from ._settings import SandboxSettings as SandboxSettings
