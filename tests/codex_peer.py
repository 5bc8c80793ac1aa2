"""The real Codex CLI as a test peer: the npm package, a scripted model, and ``codex exec``.

``codex exec`` runs non-interactively against ``ScriptedModel``, a local stand-in for the
Responses API that answers each turn with the next pre-written tool call (streamed as SSE),
so no network and no account are involved. Its ``environments.toml`` names one remote
environment — the exec server under test — so every command and file operation of the
agent goes over the exec-server protocol.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

CODEX_VERSION: Final = "0.169.0"
# A model whose metadata in Codex 0.169 offers the freeform apply_patch tool.
MODEL: Final = "gpt-5.5"
MODEL_KEY_VAR: Final = "EXEC_SERVER_TEST_MODEL_KEY"
EXEC_TIMEOUT: Final = 120.0


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "exec-server-tests" / "codex"


def codex_binary() -> str:
    """The ``codex`` binary of ``@openai/codex@0.169.0``, installed into a cache dir once.

    Skips the test (one line) only when npm itself is missing; an install that fails fails.
    """
    target = _cache_dir()
    binary = target / "node_modules" / ".bin" / "codex"
    if binary.exists():
        return _native(binary)
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the real-Codex tests need it")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(target), f"@openai/codex@{CODEX_VERSION}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert binary.exists(), f"npm installed no {binary}"
    return _native(binary)


def _native(launcher: Path) -> str:
    """The platform binary the npm launcher (a node script) would start: killing the node
    wrapper would orphan it, so the tests run it directly."""
    found = sorted(launcher.parents[1].glob("@openai/codex-*/vendor/*/bin/codex"))
    return str(found[0]) if found else str(launcher)


# --- the scripted model ----------------------------------------------------------------------


# In a step's arguments: the unified-exec session id of the last "Process running" output.
SESSION_ID: Final = "__session_id__"
_SESSION_RE: Final = re.compile(r"Process running with session ID (\d+)")


def call(name: str, **arguments: Any) -> dict[str, Any]:
    """A step: the model calls function tool ``name`` (``exec_command``, ``write_stdin``…)."""
    return {"type": "function_call", "name": name, "arguments": json.dumps(arguments)}


def patch(text: str) -> dict[str, Any]:
    """A step: the model calls the freeform ``apply_patch`` tool with ``text``."""
    return {"type": "custom_tool_call", "name": "apply_patch", "input": text}


def say(text: str) -> dict[str, Any]:
    """A step: the model answers and the turn ends."""
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


class ScriptedModel:
    """A Responses API stand-in: turn N (N tool outputs seen so far) gets ``steps[N]``.

    Runs in a thread (``http.server``); ``tool_outputs`` is what the agent reported back.
    """

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = steps
        self.requests: list[dict[str, Any]] = []
        model = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, "application/json", b'{"models":[],"data":[]}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                model.requests.append(body)
                self._send(200, "text/event-stream", model._turn(body))

            def _send(self, status: int, kind: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _turn(self, body: dict[str, Any]) -> bytes:
        seen = [item for item in body.get("input", []) if str(item.get("type", "")).endswith("_call_output")]
        turn = len(seen)
        step = dict(self.steps[min(turn, len(self.steps) - 1)])
        if step["type"] == "function_call" and SESSION_ID in step["arguments"]:
            running = [m.group(1) for item in seen if (m := _SESSION_RE.search(str(item.get("output"))))]
            step["arguments"] = step["arguments"].replace(f'"{SESSION_ID}"', running[-1] if running else "0")
        step["id"] = f"item_{turn}"
        if step["type"] != "message":
            step["call_id"] = f"call_{turn}"
        events = [
            {"type": "response.created", "response": {"id": f"resp_{turn}"}},
            {"type": "response.output_item.done", "item": step},
            {
                "type": "response.completed",
                "response": {"id": f"resp_{turn}", "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}},
            },
        ]
        return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

    def tool_outputs(self) -> list[str]:
        """Each tool call's output as the model received it, in order."""
        if not self.requests:
            return []
        items = self.requests[-1].get("input", [])
        return [str(item["output"]) for item in items if str(item.get("type", "")).endswith("_call_output")]

    def __enter__(self) -> ScriptedModel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# --- codex exec --------------------------------------------------------------------------------


@attrs.frozen
class ExecRun:
    returncode: int
    stdout: str
    stderr: str
    tool_outputs: list[str]


def write_codex_home(home: Path, model_url: str, environment_url: str, token: str | None) -> None:
    """``config.toml`` (the scripted model, no approvals) and ``environments.toml`` (only the remote)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "scripted"\n'
        'approval_policy = "never"\n'
        "[model_providers.scripted]\n"
        'name = "scripted"\n'
        f'base_url = "{model_url}"\n'
        'wire_api = "responses"\n'
        f'env_key = "{MODEL_KEY_VAR}"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    token_line = f'auth_bearer_token = "{token}"\n' if token is not None else ""
    (home / "environments.toml").write_text(
        'default = "remote"\ninclude_local = false\n[[environments]]\nid = "remote"\n' f'url = "{environment_url}"\n' + token_line
    )


async def codex_exec(
    steps: list[dict[str, Any]], *, workspace: Path, home: Path, url: str, token: str | None, args: tuple[str, ...] = ()
) -> ExecRun:
    """Run ``codex exec`` once against the exec server at ``url`` with a scripted model."""
    binary = codex_binary()
    with ScriptedModel(steps) as model:
        write_codex_home(home, model.base_url, url, token)
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": os.environ.get("HOME", "/root"),
            "CODEX_HOME": str(home),
            MODEL_KEY_VAR: "not-a-real-key",
            "RUST_LOG": "error",
        }
        with trio.fail_after(EXEC_TIMEOUT):
            completed = await trio.run_process(
                [binary, "exec", "--skip-git-repo-check", "-C", str(workspace), *args, "run the scripted steps"],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
                cwd=str(workspace),
            )
        return ExecRun(
            completed.returncode,
            completed.stdout.decode("utf-8", "replace"),
            completed.stderr.decode("utf-8", "replace"),
            model.tool_outputs(),
        )


@contextlib.asynccontextmanager
async def codex_exec_server(home: Path) -> AsyncIterator[str]:
    """``codex exec-server`` on a free loopback port; yields its ws:// URL."""
    binary = codex_binary()
    home.mkdir(parents=True, exist_ok=True)
    # Its own HOME: Codex's server snapshots the user's login shell into every command, and
    # the host's profile (pyenv's, say) would add its noise to the output being compared.
    (home / "user").mkdir(exist_ok=True)
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
        with trio.fail_after(30):
            while b"\n" not in line:
                data = await process.stdout.receive_some(4096)
                assert data, "codex exec-server exited before printing its URL"
                line += data
        yield line.decode().strip().splitlines()[0]
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its sandbox helpers too
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@contextlib.contextmanager
def scratch_workspace(uid: int) -> Iterator[Path]:
    """A fresh directory in /tmp (not under pytest's 0700 tmp_path: the sandbox's uid must
    reach it), owned by ``uid`` when we are root — the identity a root server's sandbox
    runs a workspace's commands as."""
    path = Path(tempfile.mkdtemp(prefix="codex-peer-", dir="/tmp"))
    try:
        path.chmod(0o777)  # writable to whatever uid the sandbox runs as: only the sandbox decides
        if os.geteuid() == 0:
            os.chown(path, uid, uid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
