"""``mypy --strict`` stays clean on every package: protocol, server and client (run as CI runs it)."""

from __future__ import annotations

import subprocess
import sys

from rawclient import REPO_ROOT

CHECKED = ("protocol", "exec_server", "exec_client")


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *CHECKED],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
