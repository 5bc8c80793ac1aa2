"""What the security tests share: the CLI server as a child with a chosen environment."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs
import psutil

from rawclient import CliServer, cli_env, run_cli_server

MIB: Final = 1024 * 1024


@attrs.frozen
class ChildServer:
    cli: CliServer
    url: str
    token: str

    @property
    def pid(self) -> int:
        return int(self.cli.process.pid)

    @property
    def alive(self) -> bool:
        return self.cli.process.returncode is None and self.cli.process.poll() is None

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def peak_rss(self) -> int:
        """VmHWM: the high-water mark of the server's resident set, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@contextlib.asynccontextmanager
async def child_server(
    directory: Path, *extra: str, env: dict[str, str | None] | None = None, token_in_env: bool = False
) -> AsyncIterator[ChildServer]:
    """``python -m exec_server serve --listen ws://127.0.0.1:0 ...`` as a child.

    ``token_in_env``: the token is passed in ``EXEC_SERVER_TOKEN`` (else in a 0600 file).
    """
    token = secrets.token_urlsafe(32)
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--audit-denials", "off", *extra]
    overrides: dict[str, str | None] = dict(env or {})
    if token_in_env:
        overrides["EXEC_SERVER_TOKEN"] = token
    else:
        token_file = directory / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        args += ["--token-file", str(token_file)]
    async with run_cli_server(args, cli_env(**overrides)) as cli:
        url = (await cli.stdout_line()).decode().strip()
        assert url, f"the server exited before printing its URL: {bytes(cli.stderr)!r}"
        yield ChildServer(cli, url, token)
