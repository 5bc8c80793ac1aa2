"""Servers under test: a real ``exec-server`` subprocess, or one inside the benchmark's trio loop.

The subprocess is what users deploy (client and server on separate cores) and the only way to
measure the server's own RSS; the in-process server exists for the sandbox-overhead arm, which
needs a server whose heap the benchmark can inflate to about 1 GiB without any hook in the
public server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import attrs
import trio

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT: Final = 20.0


@attrs.frozen
class ServerAddress:
    url: str
    token: str
    pid: int


@contextlib.contextmanager
def server_process(*, sandbox: str | None = None, audit_denials: str | None = None, extra: tuple[str, ...] = ()) -> Iterator[ServerAddress]:
    """Run ``python -m exec_server serve`` on a free loopback port; stop it with SIGTERM on exit.

    ``sandbox``/``audit_denials`` None: the server's own defaults (readOnly, ``auto``), as shipped.
    """
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        token = secrets.token_urlsafe(32)
        token_file = Path(tmp) / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = [
            sys.executable, "-m", "exec_server", "serve",
            "--listen", "ws://127.0.0.1:0",
            *(["--sandbox", sandbox] if sandbox is not None else []),
            *(["--audit-denials", audit_denials] if audit_denials is not None else []),
            "--token-file", str(token_file),
            "--log-level", "WARNING",
            *extra,
        ]  # fmt: skip
        proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=None)
        try:
            url = _read_url(proc)
            yield ServerAddress(url, token, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _read_url(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline().decode().strip()
            if line.startswith("ws://"):
                return line
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"exec-server did not print its URL (exit status {proc.poll()})")


@contextlib.asynccontextmanager
async def in_process_server(*, audit_denials: str = "off") -> AsyncIterator[ServerAddress]:
    """A server in this trio loop (unsandboxed by default; readOnly on request)."""
    from exec_server import Server, ServerConfig, serve_websocket
    from exec_server.sandbox import Sandbox, SandboxSettings
    from protocol import SandboxMode

    settings = SandboxSettings(default_mode=SandboxMode.NONE, allow_unsandboxed=True, audit_denials=audit_denials)
    config = ServerConfig(token=secrets.token_urlsafe(32), sandbox=settings)
    server = Server(config, Sandbox.create(settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        listener = await nursery.start(serve_websocket, server, "127.0.0.1", 0)
        try:
            yield ServerAddress(f"ws://127.0.0.1:{listener.port}", config.token, os.getpid())
        finally:
            server.stop()
            nursery.cancel_scope.cancel()
