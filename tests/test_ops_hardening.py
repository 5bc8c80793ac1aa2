"""Start-time token checks, descriptor floods, and WebSocket hygiene (Origin, 1007, binary frames).

Every test here drives a real server: the CLI as a child process where the start-up
contract or the process's own limits matter, else an in-process server on loopback.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import signal
import socket
import struct
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from exec_server import Server, ServerConfig
from exec_server._websocket import WebSocketOptions, serve_websocket
from exec_server.sandbox import Sandbox
from rawclient import REPO_ROOT, cli_env, no_leftover_processes, open_raw_client, output_of, run_cli_server  # noqa: F401

TOKEN = "t" * 8 + secrets.token_urlsafe(32)


async def run_serve(args: list[str], env: dict[str, str] | None = None) -> trio.CompletedProcess[bytes]:
    """``exec-server serve`` expected to refuse to start: its exit status and output."""
    return await trio.run_process(
        [sys.executable, "-m", "exec_server", "serve", "--listen", "ws://127.0.0.1:0", "--sandbox", "none", *args],
        env=env or cli_env(),
        cwd=REPO_ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.count("\n") == 1, text
    return text.strip()


# --- token files -------------------------------------------------------------------------


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _symlink(tmp: Path) -> Path:
    target = _private(tmp / "real", TOKEN + "\n")
    link = tmp / "token"
    link.symlink_to(target)
    return link


def _mode(mode: int) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = _private(tmp / "token", TOKEN + "\n")
        path.chmod(mode)
        return path

    return make


def _other_owner(tmp: Path) -> Path:
    path = _private(tmp / "token", TOKEN + "\n")
    os.chown(path, 65534, 65534)
    return path


def _short(tmp: Path) -> Path:
    return _private(tmp / "token", "x" * 31 + "\n")


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (_symlink, "symlink"),
        (_mode(0o640), "mode 0640"),
        (_mode(0o604), "mode 0604"),
        (_mode(0o620), "mode 0620"),
        (_other_owner, "owned by uid 65534"),
        (_short, "at least 32"),
    ],
    ids=["symlink", "group-readable", "other-readable", "group-writable", "other-owner", "short"],
)
@pytest.mark.parametrize("option", ["--token-file", "--tokens-file"])
async def test_unsafe_token_file_is_refused_at_start(
    tmp_path: Path, make: Callable[[Path], Path], complaint: str, option: str
) -> None:
    path = make(tmp_path)
    if option == "--tokens-file":
        # Same file, in the named form: rewrite the content, keep the property under test.
        real = path.resolve()
        mode = real.stat().st_mode & 0o777
        owner = real.stat().st_uid
        token = real.read_text().strip()
        os.chmod(real, 0o600)
        real.write_text(f"ci {token}\n")
        os.chmod(real, mode)
        os.chown(real, owner, owner)
    with trio.fail_after(30):
        done = await run_serve([option, str(path)])
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert complaint in line and str(path) in line, line
    assert done.stdout == b""  # no URL: it never listened


async def test_short_env_token_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await run_serve(["--token-file", str(tmp_path / "t")], cli_env(EXEC_SERVER_TOKEN="short"))
    assert done.returncode == 2
    assert "at least 32" in one_line(done.stderr)


# --- file descriptors ----------------------------------------------------------------------


def _nofile_soft(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            fields = line.split()
            return int(fields[3]), int(fields[4])
    raise AssertionError("no open-files line")


async def _cli_under_prlimit(args: list[str], nofile: str, tmp_path: Path) -> Any:
    token_file = _private(tmp_path / "token", TOKEN + "\n")
    argv = [
        "prlimit", f"--nofile={nofile}", "--", sys.executable, "-m", "exec_server", "serve",
        "--listen", "ws://127.0.0.1:0", "--sandbox", "none", "--audit-denials", "off",
        "--token-file", str(token_file), *args,
    ]  # fmt: skip
    return await trio.lowlevel.open_process(argv, stdout=-1, stderr=-1, stdin=-3, env=cli_env(), cwd=REPO_ROOT)


async def _first_line(process: Any) -> str:
    buffer = b""
    while b"\n" not in buffer:
        data = await process.stdout.receive_some(4096)
        assert data, "the server exited before printing its URL"
        buffer += data
    return buffer.split(b"\n", 1)[0].decode()


async def _stop(process: Any) -> int:
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(15):
        return int(await process.wait())
    process.kill()
    return int(await process.wait())


async def test_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        process = await _cli_under_prlimit([], "64:4096", tmp_path)
        try:
            await _first_line(process)
            assert _nofile_soft(process.pid) == (4096, 4096)
        finally:
            assert await _stop(process) == 0
            for stream in (process.stdout, process.stderr):
                await stream.aclose()


async def test_descriptor_flood_then_an_authenticated_client_is_served(tmp_path: Path, no_leftover_processes: None) -> None:
    """Bare TCP connects until the server has no descriptor left: it keeps running, and serves."""
    with trio.fail_after(60):
        # The pending cap above the descriptor limit, so the flood really exhausts descriptors.
        process = await _cli_under_prlimit(["--max-pending-handshakes", "10000"], "160:160", tmp_path)
        stderr = bytearray()

        async def collect_stderr() -> None:
            while data := await process.stderr.receive_some(65536):
                stderr.extend(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_stderr)
            await _flood_then_serve(process)
        for stream in (process.stdout, process.stderr):
            await stream.aclose()
        assert b"Traceback" not in stderr, stderr.decode()
        assert b"connections refused: accept failed" in stderr


async def _flood_then_serve(process: Any) -> None:
    try:
        url = await _first_line(process)
        port = int(url.rsplit(":", 1)[1])
        flood = []
        try:
            for _ in range(400):
                sock = socket.create_connection(("127.0.0.1", port))
                flood.append(sock)
            # Let the server's accept loop run into EMFILE.
            with trio.move_on_after(2):
                while True:
                    await trio.sleep(0.05)
                    if len(os.listdir(f"/proc/{process.pid}/fd")) >= 155:
                        break
            assert len(os.listdir(f"/proc/{process.pid}/fd")) >= 150  # it really ran out
            assert process.poll() is None
        finally:
            for sock in flood:
                sock.close()
        # The flood is gone; an authenticated client is served normally.
        for attempt in range(50):
            try:
                async with open_raw_client(url, TOKEN) as raw:
                    await raw.initialize()
                    assert output_of(await raw.run("p", ["echo", "still-here"])) == b"still-here\n"
                break
            except (trio_websocket.HandshakeError, OSError, trio_websocket.ConnectionClosed):
                await trio.sleep(0.1)  # backlog of dead flood connections still draining
        else:
            raise AssertionError("no authenticated client could connect after the flood")
        assert process.poll() is None
    finally:
        assert await _stop(process) == 0


@pytest.fixture
async def small_gate_server(nursery: trio.Nursery) -> Any:
    config = ServerConfig(token=TOKEN, sandbox=_unsandboxed())
    server = Server(config, Sandbox.create(config.sandbox))
    await nursery.start(server.run)
    options = WebSocketOptions(max_pending_handshakes=3, handshake_timeout=5.0, allow_origins=frozenset({"https://ui.example"}))
    bound = await nursery.start(lambda task_status: serve_websocket(server, "127.0.0.1", 0, options=options, task_status=task_status))
    return bound.port


def _unsandboxed() -> Any:
    from conftest import UNSANDBOXED

    return UNSANDBOXED


async def test_pending_handshakes_are_capped_and_time_out(small_gate_server: int, autojump_clock: Any) -> None:
    port = small_gate_server
    with trio.fail_after(30):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.sleep(0.1)  # accepted and pending
        # The fourth is closed at once: nothing is read, EOF comes without waiting.
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()
        assert await extra.receive_some(100) == b""
        assert trio.current_time() - started < 1.0
        await extra.aclose()
        # The idle ones are closed when their handshake time is up.
        for stream in idle:
            assert await stream.receive_some(100) == b""
        assert trio.current_time() - started >= 4.5
        for stream in idle:
            await stream.aclose()


# --- protocol hygiene ------------------------------------------------------------------------


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def test_invalid_utf8_text_frame_closes_with_1007(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            await raw.websocket._stream.send_all(_masked_frame(0x1, b'{"a":"\xff\xfe"}'))
            await raw.wait_until(lambda: raw.closed is not None)
            assert raw.closed is not None and raw.closed.reason.code == 1007


@pytest.mark.parametrize("binary_output", [False, True])
async def test_binary_frame_is_not_a_call(server: Any, binary_output: bool, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize(binaryOutput=binary_output)
            call = {"jsonrpc": "2.0", "id": 7, "method": "process/start", "params": {"processId": "b", "argv": ["true"]}}
            await raw.send_raw(json.dumps(call).encode())
            await raw.wait_until(lambda: any(m.get("error") for m in raw.log))
            (error,) = [m for m in raw.log if m.get("error")]
            assert error["id"] is None and error["error"]["code"] == -32700
            assert "binary frame" in error["error"]["message"]
            # Nothing was started, and the connection keeps serving.
            assert (await raw.call("process/list"))["processes"] == []
            assert output_of(await raw.run("t", ["echo", "ok"])) == b"ok\n"


async def _upgrade_status(url: str, headers: list[tuple[bytes, bytes]]) -> int:
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers):
            return 101
    except trio_websocket.ConnectionRejected as exc:
        return int(exc.status_code)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


async def test_foreign_origin_is_refused_with_403(small_gate_server: int) -> None:
    port = small_gate_server
    url = f"ws://127.0.0.1:{port}"
    auth = [(b"Authorization", f"Bearer {TOKEN}".encode())]
    with trio.fail_after(20):
        assert await _upgrade_status(url, auth + [(b"Origin", b"https://evil.example")]) == 403
        # A foreign origin is refused before the token is even looked at.
        assert await _upgrade_status(url, [(b"Origin", b"https://evil.example")]) == 403
        assert await _upgrade_status(url, auth + [(b"Origin", b"null")]) == 403
        # Listed in --allow-origin: allowed.
        assert await _upgrade_status(url, auth + [(b"Origin", b"https://UI.example/")]) == 101
        # The server's own address by IP literal: allowed.
        assert await _upgrade_status(url, auth + [(b"Origin", f"http://127.0.0.1:{port}".encode())]) == 101
        # No Origin (not a browser): allowed.
        assert await _upgrade_status(url, auth) == 101


async def test_dns_rebinding_origin_is_refused(small_gate_server: int) -> None:
    """A page on a name that resolves to this host: Origin and Host agree, but name no IP."""
    port = small_gate_server
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = (
            f"GET / HTTP/1.1\r\nHost: rebind.example:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://rebind.example:{port}\r\nSec-WebSocket-Protocol: bearer.{TOKEN}\r\n\r\n"
        )
        await stream.send_all(request.encode())
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 403"), answer[:100]


async def test_sigterm_right_after_the_url_always_drains(tmp_path: Path, no_leftover_processes: None) -> None:
    _private(tmp_path / "token", TOKEN + "\n")
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(tmp_path / "token"), "--sandbox", "none"]
    with trio.fail_after(60):
        for _ in range(5):
            async with run_cli_server(args, cli_env()) as cli:
                assert (await cli.stdout_line()).startswith(b"ws://")
                cli.process.send_signal(signal.SIGTERM)
                assert await cli.process.wait() == 0
            assert b"SIGTERM: draining" in cli.stderr


@pytest.mark.parametrize("where", ["default", "--token-file"])
async def test_a_sandboxed_command_cannot_read_the_token_file(tmp_path: Path, where: str, no_leftover_processes: None) -> None:
    """Through the CLI as operators run it: a root server's sandboxed command keeps uid 0, and
    the token file (default path or --token-file) is masked in its view all the same."""
    if os.geteuid() != 0:
        pytest.skip("runs the server as root")
    home = tmp_path / "home"
    home.mkdir()
    token_file = home / ".config" / "exec-server" / "token" if where == "default" else tmp_path / "token"
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--sandbox", "readOnly", "--audit-denials", "off"]
    if where == "--token-file":
        args += ["--token-file", str(token_file)]
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env(HOME=str(home))) as cli:
            url = (await cli.stdout_line()).decode()
            token = token_file.read_text().strip()  # generated at start, mode 0600
            async with open_raw_client(url, token) as raw:
                await raw.initialize()
                events = await raw.run("steal", ["sh", "-c", f"cat {token_file}; id -u"], cwd="/")
                stdout = output_of(events)
                exited = [event.params for event in events if event.kind == "exited"]
            assert token.encode() not in stdout and token.encode() not in output_of(events, "stderr")
            # It ran as root (the sandbox keeps the server's uid) and the cat still failed.
            assert stdout.strip() == b"0" and exited[0]["exitCode"] == 0
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
