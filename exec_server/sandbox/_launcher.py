"""Finding the compiled launcher, rebuilding it when missing or stale, and its self-test."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Final

import attrs

from ._build import LAUNCHER_NAME, SOURCE_NAME, LauncherBuildError, compile_launcher, source_id
from ._errors import SandboxUnavailable

_HERE: Final = Path(__file__).resolve().parent
SELF_TEST_TIMEOUT_S: Final = 10.0
# The launcher's own exit codes (launcher.c): the sandbox was not applied / exec failed.
EXIT_SETUP_FAILED: Final = 125
EXIT_EXEC_FAILED: Final = 127


@attrs.frozen
class Launcher:
    """A launcher binary and the hash of the source it was compiled from."""

    path: str
    source_id: str


def _binary_source_id(path: Path) -> str | None:
    try:
        result = subprocess.run([str(path), "--source-id"], capture_output=True, text=True, timeout=SELF_TEST_TIMEOUT_S)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/exec-server`` (``~/.cache/exec-server``): where fallback builds go."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "exec-server")


def _private_dir(path: Path) -> Path:
    # The server (often root) executes what lies here: refuse a directory someone else
    # could swap a binary into.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SandboxUnavailable(f"launcher cache {path} is not private to this user")
    return path


def find_launcher(*, package_dir: Path = _HERE, cache_dir: Path | None = None) -> Launcher:
    """The launcher compiled from this package's ``launcher.c``.

    Uses the binary the install built next to the source; if it is missing or was built
    from another version of the source (an edited editable install), compiles one into a
    cache directory keyed by the source hash.

    Raises:
        SandboxUnavailable: no usable binary and it cannot be compiled.
    """
    source = package_dir / SOURCE_NAME
    packaged = package_dir / LAUNCHER_NAME
    if not source.exists():
        # A binary-only install: trust what it shipped, as long as it runs.
        found = _binary_source_id(packaged)
        if found is None:
            raise SandboxUnavailable(f"sandbox launcher missing ({packaged}) and no source to build it from")
        return Launcher(str(packaged), found)
    wanted = source_id(source)
    if _binary_source_id(packaged) == wanted:
        return Launcher(str(packaged), wanted)
    cached = _private_dir(cache_dir or default_cache_dir()) / f"{LAUNCHER_NAME}-{wanted}"
    if _binary_source_id(cached) != wanted:
        try:
            compile_launcher(source, cached)
        except LauncherBuildError as exc:
            raise SandboxUnavailable(f"sandbox launcher missing and building it failed: {exc}") from None
    return Launcher(str(cached), wanted)


def self_test(launcher: Launcher, args: list[str], netns_fd: int | None = None) -> str | None:
    """Run the launcher with ``--check`` (apply everything, exec nothing).

    Returns:
        None if the policy applied cleanly, else the launcher's complaint.
    """
    try:
        result = subprocess.run(
            [launcher.path, "--check", *args],
            capture_output=True,
            text=True,
            cwd="/",
            env={},
            pass_fds=() if netns_fd is None else (netns_fd,),
            timeout=SELF_TEST_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"launcher self-test failed: {exc}"
    if result.returncode == 0 and result.stdout.startswith("ok"):
        return None
    return result.stderr.strip() or f"launcher self-test exited {result.returncode}"
