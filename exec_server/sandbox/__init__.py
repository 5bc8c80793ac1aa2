"""The kernel-enforced sandbox: Landlock, seccomp, an empty network namespace, no root.

The server uses :class:`Sandbox` (see ``notes/SANDBOX_INTERFACE.md``): ``create`` once,
``resolve`` + ``prepare`` per request, ``run`` as a long-lived task, ``denial_report``
after each reaped process. The policy is applied by a small C launcher (``launcher.c``)
that the server starts on CPython's vfork path and that execs the command.
"""

from ._audit import AuditUnavailable as AuditUnavailable
from ._denials import DenialMonitor as DenialMonitor, DenialReport as DenialReport
from ._errors import SandboxUnavailable as SandboxUnavailable
from ._identity import Identity as Identity, choose_identity as choose_identity
from ._kernel import KernelSupport as KernelSupport, detect as detect
from ._launcher import Launcher as Launcher, find_launcher as find_launcher
from ._plan import LaunchPlan as LaunchPlan
from ._sandbox import Sandbox as Sandbox
from ._settings import SandboxSettings as SandboxSettings
