"""Peers where installed: asyncssh over one connection to a local sshd on loopback.

The benchmark starts its own sshd (``sshd -D -f <generated config>``) with a generated host
key, a generated user key and a private authorized_keys file, on a free loopback port; it
never touches the system's sshd configuration. Without openssh-server or asyncssh the
section is one line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from ._report import Section, fmt_ms
from ._stats import ArmSummary
from ._throughput import Source

SSHD_CANDIDATES: Final = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
PRIVSEP_DIR: Final = Path("/run/sshd")
STARTUP_TIMEOUT: Final = 10.0
# sshd runs every command as `$SHELL -c ...`, and bash sources ~/.bashrc when started by sshd
# at shell level 1. On this machine root's .bashrc runs `pyenv init` (~100+ ms), which would
# measure the account, not the transport; our server execs argv directly. SHLVL=1 makes bash
# count itself nested (level 2) and skip the rc file, as a dedicated service account would.
RC_SKIP_ENV: Final = {"SHLVL": "1"}


@attrs.define
class PeerOutcome:
    section: Section
    latency: dict[str, ArmSummary] = attrs.Factory(dict)
    samples: dict[str, list[float]] = attrs.Factory(dict)


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((path for path in SSHD_CANDIDATES if os.access(path, os.X_OK)), None)


def why_skipped() -> str | None:
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return "asyncssh peer skipped: asyncssh is not installed (pip install -e '.[bench]')"
    if find_sshd() is None:
        return "asyncssh peer skipped: no sshd on this machine (apt-get install -y openssh-server)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_sshd() -> Iterator[tuple[int, Any]]:
    """Yield (port, user key) of a private sshd on 127.0.0.1."""
    import asyncssh

    sshd = find_sshd()
    assert sshd is not None
    with tempfile.TemporaryDirectory(prefix="bench-sshd-") as tmp:
        directory = Path(tmp)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_private_key(str(directory / "host_key"))
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        user_key.write_public_key(str(directory / "authorized_keys"))
        for name in ("host_key", "authorized_keys"):
            (directory / name).chmod(0o600)
        port = _free_port()
        (directory / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {directory / 'host_key'}",
                    f"PidFile {directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PrintMotd no",
                    # Fifty channels at once on one connection (the default allows ten).
                    "MaxSessions 128",
                    # See RC_SKIP_ENV: lets the client mark the shell as nested so bash skips ~/.bashrc.
                    "AcceptEnv SHLVL",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        # sshd refuses to start without its privilege-separation directory (normally made by
        # the service unit, which this benchmark does not use).
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(directory / "sshd_config")], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                        raise RuntimeError(f"sshd did not start: {error.strip()}") from None
                    time.sleep(0.02)
            yield port, user_key
        finally:
            proc.terminate()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


async def _latency(connection: Any, runs: int, calls: int) -> tuple[list[list[float]], list[list[float]]]:
    ssh_runs, local_runs = [], []
    for _ in range(3):
        await connection.run("/usr/bin/true", check=True, env=RC_SKIP_ENV)
    for _ in range(runs):
        ssh, local = [], []
        for i in range(calls):
            for k in range(2):
                if (i + k) % 2 == 0:
                    start = time.perf_counter()
                    await connection.run("/usr/bin/true", check=True, env=RC_SKIP_ENV)
                    ssh.append(time.perf_counter() - start)
                else:
                    start = time.perf_counter()
                    subprocess.run(["/usr/bin/true"], check=True)
                    local.append(time.perf_counter() - start)
        ssh_runs.append(ssh)
        local_runs.append(local)
    return ssh_runs, local_runs


async def _stream(connection: Any, source: Source) -> tuple[float, bool]:
    start = time.perf_counter()
    result = await connection.run(" ".join(source.argv), encoding=None, check=True, env=RC_SKIP_ENV)
    elapsed = time.perf_counter() - start
    data = result.stdout
    return elapsed, len(data) == source.size and hashlib.sha256(data).hexdigest() == source.sha256


async def _at_once(connection: Any, count: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = await asyncio.gather(*(connection.run("sleep 0.1; echo hi", env=RC_SKIP_ENV) for _ in range(count)))
    wall = time.perf_counter() - start
    return wall, sum(r.exit_status == 0 and r.stdout == "hi\n" for r in results)


async def _measure(port: int, user_key: Any, protocols: Sequence[tuple[str, int, int]], sources: Sequence[Source], count: int, reps: int, outcome: PeerOutcome) -> None:
    import asyncssh

    section = outcome.section
    async with asyncssh.connect(
        "127.0.0.1", port, username=getpass.getuser(), client_keys=[user_key], known_hosts=None
    ) as connection:
        table = section.table("asyncssh (one connection)", "p50 ms", "p90 ms", "p99 ms", "subprocess.run p50 ms", "p50 / subprocess.run")
        for label, runs, calls in protocols:
            ssh_runs, local_runs = await _latency(connection, runs, calls)
            ssh, local = ArmSummary.of(ssh_runs), ArmSummary.of(local_runs)
            outcome.latency[label] = ssh
            outcome.samples[label] = [s for run in ssh_runs for s in run]
            table.add(
                f"one-shot /usr/bin/true, {label} ({runs} × {calls})", fmt_ms(ssh.p50), fmt_ms(ssh.p90), fmt_ms(ssh.p99),
                fmt_ms(local.p50), f"{ssh.p50 / local.p50:.2f}×",
            )  # fmt: skip
        stream_table = section.table("asyncssh stream", "MB/s (median)", "byte-exact")
        for source in sources:
            samples = [await _stream(connection, source) for _ in range(reps)]
            rate = source.size / 1e6 / statistics.median(s for s, _ in samples)
            stream_table.add(f"{source.size / 1e6:.0f} MB of {source.name}", f"{rate:.0f}", "yes" if all(ok for _, ok in samples) else "**no**")
        walls = [await _at_once(connection, count) for _ in range(reps)]
        stream_table.add(
            f"{count} × `sleep 0.1; echo hi` at once: wall s",
            " / ".join(f"{w:.3f}" for w, _ in walls),
            " / ".join(f"{g}/{count}" for _, g in walls),
        )


def run_section(protocols: Sequence[tuple[str, int, int]], sources: Sequence[Source], count: int, reps: int) -> PeerOutcome:
    outcome = PeerOutcome(Section("Peers: asyncssh over a local sshd"))
    reason = why_skipped()
    if reason is not None:
        outcome.section.note(reason)
        return outcome
    with local_sshd() as (port, user_key):
        asyncio.run(_measure(port, user_key, protocols, sources, count, reps, outcome))
    outcome.section.note(
        "sshd started by the benchmark on 127.0.0.1 with generated keys; each command goes through the account's shell "
        "(`bash -c`), as ssh does, with SHLVL=1 so that bash skips root's ~/.bashrc (here `pyenv init`, ~100+ ms per "
        "command). Same machine and run as the tables above."
    )
    return outcome
