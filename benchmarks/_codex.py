"""The Codex peer arm: ``codex exec-server`` and our server, side by side, in Codex's dialect.

One raw client speaks Codex's exec-server protocol (the one ``codex exec`` speaks: no
``protocolVersion``, ``file://`` cwd, pushed events) to both servers, alternating between
them round by round so that load on the machine hits both arms alike. Arms: a one-shot
``/usr/bin/true`` (start → ``process/closed``) with ``sandbox: null`` (both servers run it
unsandboxed here), the same under Codex's read-only profile (our Landlock sandbox vs
Codex's bubblewrap/seccomp one), and a large stdout stream. The Codex binary is the one the
tests install (``@openai/codex`` in ``$XDG_CACHE_HOME/exec-server-tests/codex``); without it
the section is one line saying so.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import attrs
import trio
import trio_websocket

from ._report import Section, fmt_ms
from ._stats import ArmSummary

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
RECEIVE_BUFFER_BYTES: Final = 256 * 1024
STARTUP_TIMEOUT: Final = 30.0
READ_ONLY_PROFILE: Final = {
    "permissions": {
        "type": "managed",
        "file_system": {"type": "restricted", "entries": [{"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"}]},
        "network": "restricted",
    },
    "windowsSandboxLevel": "disabled",
    "useLegacyLandlock": False,
}


OUTPUT_PREFIX: Final = '{"method":"process/output"'


def _base64_length(text: str) -> int:
    """Decoded size of padded base64 ``text`` (what the stream arm counts, without decoding)."""
    return len(text) // 4 * 3 - (2 if text.endswith("==") else 1 if text.endswith("=") else 0)


def find_codex() -> str | None:
    """The Codex binary the tests use; on a fresh clone, installed the way the tests install it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    modules = Path(base) / "exec-server-tests" / "codex" / "node_modules"
    # The platform binary itself, not the node launcher (killing that would orphan it).
    found = sorted(modules.glob("@openai/codex-*/vendor/*/bin/codex"))
    if found:
        return str(found[0])
    return _install_codex()


def _install_codex() -> str | None:
    """``tests/codex_peer.py``'s ``codex_binary()`` (npm install of the pinned version); None without npm."""
    import importlib.util

    peer = Path(__file__).resolve().parents[1] / "tests" / "codex_peer.py"
    spec = importlib.util.spec_from_file_location("_bench_codex_peer", peer)
    if spec is None or spec.loader is None or shutil.which("npm") is None:
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        binary: str = module.codex_binary()
    except (ImportError, OSError, subprocess.SubprocessError, AssertionError):
        return None
    return binary


class CodexDialectClient:
    """One connection in Codex's dialect; one process at a time, finished on pushed events."""

    def __init__(self, websocket: trio_websocket.WebSocketConnection, info: dict[str, Any]) -> None:
        self._ws = websocket
        self._ids = itertools.count(1)
        self._names = itertools.count(1)
        environment = info.get("environmentInfo") or {}
        # Codex's server finds its sandbox helper on the PATH it advertises.
        prepend = [uri.removeprefix("file://") for uri in environment.get("prependPathDirs", [])]
        self.path = os.pathsep.join([*prepend, os.environ.get("PATH", os.defpath)])

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, token: str | None) -> AsyncIterator[CodexDialectClient]:
        headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
        async with trio_websocket.open_websocket_url(
            url, extra_headers=headers, max_message_size=MAX_MESSAGE_BYTES, receive_buffer_size=RECEIVE_BUFFER_BYTES
        ) as websocket:
            await websocket.send_message(json.dumps({"id": 0, "method": "initialize", "params": {"clientName": "bench-codex", "resumeSessionId": None}}))
            reply = json.loads(await websocket.get_message())
            if "result" not in reply:
                raise RuntimeError(f"initialize failed: {reply}")
            await websocket.send_message('{"method":"initialized","params":{}}')
            yield cls(websocket, reply["result"])

    async def run(self, argv: list[str], cwd: str, sandbox: Any) -> tuple[int, int]:
        """Start ``argv`` and wait for its ``process/closed``; returns (exit code, stdout bytes)."""
        process_id = f"bench-{next(self._names)}"
        params = {
            "processId": process_id,
            "argv": argv,
            "cwd": "file://" + cwd,
            "envPolicy": None,
            "env": {"PATH": self.path},
            "tty": False,
            "pipeStdin": False,
            "arg0": None,
            "sandbox": None if sandbox is None else {**sandbox, "cwd": "file://" + cwd, "workspaceRoots": ["file://" + cwd]},
            "enforceManagedNetwork": False,
            "managedNetwork": None,
        }
        await self._ws.send_message(json.dumps({"id": next(self._ids), "method": "process/start", "params": params}))
        exit_code = -1
        stdout = 0
        while True:
            frame = await self._ws.get_message()
            if isinstance(frame, str) and frame.startswith(OUTPUT_PREFIX):
                # The hot path, kept cheap so the client does not cap the stream arm: both
                # servers write processId, seq, stream, chunk in that order.
                head = frame[: frame.find('"chunk":"')]
                if f'"processId":{json.dumps(process_id)},' in head and '"stream":"stdout"' in head:
                    stdout += _base64_length(frame[len(head) + 9 : frame.rindex('"')])
                continue
            message = json.loads(frame)
            if "error" in message:
                raise RuntimeError(f"process/start: {message['error']}")
            method = message.get("method")
            if method is None or message["params"].get("processId") != process_id:
                continue
            if method == "process/exited":
                exit_code = message["params"]["exitCode"]
            elif method == "process/closed":
                return exit_code, stdout


@contextlib.asynccontextmanager
async def codex_exec_server(binary: str, home: Path) -> AsyncIterator[str]:
    (home / "user").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home / "user"), "CODEX_HOME": str(home)}
    process = await trio.lowlevel.open_process(
        [binary, "exec-server", "--listen", "ws://127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(STARTUP_TIMEOUT):
            while b"\n" not in line:
                data = await process.stdout.receive_some(4096)
                if not data:
                    raise RuntimeError("codex exec-server exited before printing its URL")
                line += data
        yield line.decode().split()[0]
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its sandbox helpers too
            await process.wait()
            await process.stdout.aclose()  # type: ignore[union-attr]


@attrs.define
class CodexOutcome:
    section: Section
    # One-shot latencies in seconds: "codex", "ours" (unsandboxed one-shot) and "subprocess.run",
    # measured in the same rounds.
    one_shot: dict[str, list[float]] = attrs.Factory(dict)
    p50_ms: dict[tuple[str, str], float] = attrs.Factory(dict)
    stream_mb_s: dict[str, float] = attrs.Factory(dict)


def _local_once() -> float:
    began = time.perf_counter()
    subprocess.run(["/usr/bin/true"], check=True)
    return time.perf_counter() - began


async def run_section(url: str, token: str, *, calls: int, runs: int, stream_bytes: int) -> CodexOutcome:
    section = Section("Codex peer: our server and `codex exec-server`, both in Codex's dialect")
    outcome = CodexOutcome(section)
    binary = find_codex()
    if binary is None:
        section.note("Codex peer skipped: @openai/codex is not installed (the test suite installs it; see .ci/run)")
        return outcome
    arms = ("one-shot /usr/bin/true", "one-shot, read-only profile")
    samples: dict[tuple[str, str], list[list[float]]] = {(server, arm): [] for server in ("ours", "codex") for arm in arms}
    stream: dict[str, list[float]] = {"ours": [], "codex": []}
    local: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-codex-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        workdir.chmod(0o755)
        async with codex_exec_server(binary, Path(tmp) / "home") as codex_url:
            async with CodexDialectClient.open(url, token) as ours, CodexDialectClient.open(codex_url, None) as theirs:
                clients = {"ours": ours, "codex": theirs}
                for _ in range(runs):
                    for arm, sandbox in zip(arms, (None, READ_ONLY_PROFILE), strict=True):
                        for server, client in clients.items():
                            await client.run(["/usr/bin/true"], str(workdir), sandbox)  # warm-up
                            latencies = []
                            for _ in range(calls):
                                began = time.perf_counter()
                                code, _ = await client.run(["/usr/bin/true"], str(workdir), sandbox)
                                latencies.append(time.perf_counter() - began)
                                if code != 0:
                                    raise RuntimeError(f"{server} {arm}: exit {code}")
                            samples[(server, arm)].append(latencies)
                    local.append([_local_once() for _ in range(calls)])  # the floor, in the same round
                    for server, client in clients.items():
                        began = time.perf_counter()
                        code, got = await client.run(["head", "-c", str(stream_bytes), "/dev/zero"], str(workdir), None)
                        elapsed = time.perf_counter() - began
                        if code != 0 or got != stream_bytes:
                            raise RuntimeError(f"{server} stream: exit {code}, {got} of {stream_bytes} bytes")
                        stream[server].append(stream_bytes / elapsed / 1e6)
    floor = ArmSummary.of(local)
    table = section.table(
        "arm", "server", "p50 ms", "p90 ms", "p99 ms", "p50 / subprocess.run", "calls",
        caption=f"{runs} run(s) × {calls} calls, alternating servers, with local subprocess.run in each round",
    )  # fmt: skip
    for arm in arms:
        for server in ("ours", "codex"):
            summary = ArmSummary.of(samples[(server, arm)])
            outcome.p50_ms[(server, arm)] = summary.p50
            table.add(arm, server, fmt_ms(summary.p50), fmt_ms(summary.p90), fmt_ms(summary.p99), f"{summary.p50 / floor.p50:.2f}×", runs * calls)
    table.add("one-shot /usr/bin/true", "local subprocess.run", fmt_ms(floor.p50), fmt_ms(floor.p90), fmt_ms(floor.p99), "1.00×", runs * calls)
    outcome.one_shot = {
        "codex": [x for run in samples[("codex", arms[0])] for x in run],
        "ours": [x for run in samples[("ours", arms[0])] for x in run],
        "subprocess.run": [x for run in local for x in run],
    }
    throughput = section.table("stream", "server", "MB/s (median of runs)")
    for server in ("ours", "codex"):
        outcome.stream_mb_s[server] = statistics.median(stream[server])
        throughput.add(f"{stream_bytes / 1e6:.0f} MB of stdout, JSON text frames", server, f"{outcome.stream_mb_s[server]:.0f}")
    section.note(
        "Same raw client (benchmarks/_codex.py) for both; each server runs the command its own way (ours: Landlock launcher; "
        "Codex: its linux sandbox helper). Codex's server does not set TCP_NODELAY, which shows in its one-shot latency. "
        "Our server here is the default one: it runs `sandbox: null` under its default policy (readOnly), where Codex "
        "runs it unsandboxed, so the first row is sandboxed for us and not for Codex."
    )
    return outcome
