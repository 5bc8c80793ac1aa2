"""Compiling the C launcher: one function shared by ``setup.py`` and the runtime fallback.

This module imports only the standard library: ``setup.py`` loads it by file path inside
an isolated build environment where trio and attrs are not installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

LAUNCHER_NAME: Final = "exec-sandbox-launcher"
SOURCE_NAME: Final = "launcher.c"
_STATIC_LIBC: Final = ("/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib64/libc.a", "/usr/lib/libc.a")
_CFLAGS: Final = ("-O2", "-std=gnu11", "-Wall", "-Wextra")


class LauncherBuildError(Exception):
    """The launcher could not be compiled (no compiler, or the compiler failed)."""


def source_id(source: Path) -> str:
    """A short hash of the launcher source, compiled into the binary (``--source-id``).

    It tells a binary built from an older ``launcher.c`` (an editable install after an
    edit) from a current one.
    """
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def compile_launcher(
    source: Path, destination: Path, *, compiler: str | None = None, static: bool | None = None
) -> Path:
    """Compile ``source`` into the executable ``destination``, atomically.

    Links statically when a static libc is installed (the exec of a static binary skips
    the dynamic loader, about a third of the launcher's cost), dynamically otherwise;
    ``static`` forces one or the other (a test builds the dynamic one on purpose).

    Raises:
        LauncherBuildError: no C compiler, or it failed (for both link modes, when free).
    """
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise LauncherBuildError("no C compiler found (install gcc to build the sandbox launcher)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    define = f'-DLAUNCHER_SOURCE_ID="{source_id(source)}"'
    link_modes: list[tuple[str, ...]] = [()]
    if static is None and any(os.path.exists(p) for p in _STATIC_LIBC):
        link_modes.insert(0, ("-static",))
    elif static:
        link_modes = [("-static",)]
    errors: list[str] = []
    for link in link_modes:
        # Build next to the destination and rename: a concurrent reader never sees a
        # half-written executable.
        fd, tmp = tempfile.mkstemp(prefix=f".{LAUNCHER_NAME}.", dir=destination.parent)
        os.close(fd)
        try:
            result = subprocess.run(
                [cc, *_CFLAGS, *link, define, "-o", tmp, str(source)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                os.chmod(tmp, 0o755)
                os.replace(tmp, destination)
                return destination
            errors.append(f"{cc} {' '.join(link) or '(dynamic)'}: {result.stderr.strip()}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise LauncherBuildError("compiling the sandbox launcher failed:\n" + "\n".join(errors))
