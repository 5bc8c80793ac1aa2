"""Authentication of the WebSocket upgrade, the token file, and the ``serve`` CLI's start-up contract."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import stat
import warnings
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from exec_server._auth import load_or_create_token
from rawclient import cli_env, no_leftover_processes, open_raw_client, output_of, run_cli_server  # noqa: F401


@attrs.frozen
class Rejection:
    status_code: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | None


async def refused(url: str, **kwargs: Any) -> Rejection:
    """Open a WebSocket that the server must refuse; returns the HTTP answer."""
    try:
        async with trio_websocket.open_websocket_url(url, **kwargs):
            pass
    except trio_websocket.ConnectionRejected as exc:
        rejection = Rejection(exc.status_code, [(k.lower(), v) for k, v in exc.headers], exc.body)
    else:
        raise AssertionError("the upgrade was accepted")
    # trio-websocket 0.12 leaves the rejected socket unclosed (ResourceWarning when it is
    # collected, an error in whichever test runs next): collect it here, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return rejection


async def test_missing_token_is_401_before_upgrade(server: Any) -> None:
    with trio.fail_after(10):
        rejection = await refused(server.url)
        assert rejection.status_code == 401
        assert (b"www-authenticate", b"Bearer") in rejection.headers


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "{token}",  # the token without a scheme
        "Bearer {token}x",
        "Bearer {token_prefix}",
    ],
)
async def test_wrong_token_is_401(server: Any, header: str) -> None:
    value = header.format(token=server.token, token_prefix=server.token[:-1])
    with trio.fail_after(10):
        rejection = await refused(server.url, extra_headers=[(b"Authorization", value.encode())])
        assert rejection.status_code == 401


@pytest.mark.parametrize("subprotocol", ["bearer.wrong", "bearer.", "{token}", "Bearer.{token}x"])
async def test_wrong_subprotocol_token_is_401(server: Any, subprotocol: str) -> None:
    with trio.fail_after(10):
        rejection = await refused(server.url, subprotocols=[subprotocol.format(token=server.token)])
        assert rejection.status_code == 401


async def test_bearer_header_works(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            assert raw.websocket.subprotocol is None
            await raw.initialize()
            assert output_of(await raw.run("hi", ["echo", "hi"])) == b"hi\n"


async def test_bearer_scheme_is_case_insensitive(server: Any, no_leftover_processes: None) -> None:
    with trio.fail_after(10):
        async with open_raw_client(server.url, extra_headers=[(b"authorization", f"bearer {server.token}".encode())]) as raw:
            await raw.initialize()


async def test_bearer_subprotocol_works_and_is_echoed(server: Any, no_leftover_processes: None) -> None:
    subprotocol = f"bearer.{server.token}"
    with trio.fail_after(10):
        async with open_raw_client(server.url, subprotocols=[subprotocol]) as raw:
            assert raw.websocket.subprotocol == subprotocol
            await raw.initialize()
            assert output_of(await raw.run("hi", ["echo", "hi"])) == b"hi\n"


# --- the token file ------------------------------------------------------------------------


def test_token_file_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXEC_SERVER_TOKEN", raising=False)
    path = tmp_path / "new" / "dir" / "token"
    token, where = load_or_create_token(path)
    assert where == path
    assert len(token) >= 32 and token.isprintable() and " " not in token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.getuid()
    assert path.read_text().strip() == token
    # The next start reads the same token back.
    assert load_or_create_token(path) == (token, path)
    # A fresh file gets a fresh token.
    other, _ = load_or_create_token(tmp_path / "other")
    assert other != token


def test_token_file_content_is_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXEC_SERVER_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("  my-configured-token-0123456789abcdef\n")
    path.chmod(0o600)
    assert load_or_create_token(path) == ("my-configured-token-0123456789abcdef", path)


def test_empty_token_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXEC_SERVER_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(ValueError):
        load_or_create_token(path)


def test_env_token_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    path.write_text("from-the-file\n")
    monkeypatch.setenv("EXEC_SERVER_TOKEN", "from-the-environment")
    assert load_or_create_token(path) == ("from-the-environment", None)
    missing = tmp_path / "missing"
    assert load_or_create_token(missing) == ("from-the-environment", None)
    assert not missing.exists()


# --- the CLI -------------------------------------------------------------------------------

URL_LINE = re.compile(rb"ws://127\.0\.0\.1:(\d+)")


async def test_cli_prints_bound_url_and_exits_0_on_sigterm(tmp_path: Path, no_leftover_processes: None) -> None:
    token_file = tmp_path / "token"
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(token_file), "--sandbox", "none"]
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            line = await cli.stdout_line()
            match = URL_LINE.fullmatch(line)
            assert match, line
            assert 0 < int(match.group(1)) < 65536
            token = token_file.read_text().strip()
            assert len(token) >= 32 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
            url = line.decode()
            assert (await refused(url)).status_code == 401
            async with open_raw_client(url, token) as raw:
                await raw.initialize()
                events = await raw.run("cli", ["sh", "-c", "echo via-cli; exit 4"])
                assert output_of(events) == b"via-cli\n"
                assert [e.params["exitCode"] for e in events if e.kind == "exited"] == [4]
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
            # Nothing but the URL on stdout; logs and the token path went to stderr.
            assert await cli.stdout_line() == b""
        assert str(token_file).encode() in cli.stderr


async def test_cli_uses_existing_token_file_and_env_override(tmp_path: Path, no_leftover_processes: None) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789abcdef0123456789\n")
    token_file.chmod(0o600)
    args = ["serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(token_file), "--sandbox", "none"]
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, "file-token-0123456789abcdef0123456789") as raw:
                await raw.initialize()
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
        async with run_cli_server(args, cli_env(EXEC_SERVER_TOKEN="env-token-0123456789abcdef0123456789")) as cli:
            url = (await cli.stdout_line()).decode()
            stale = [(b"Authorization", b"Bearer file-token-0123456789abcdef0123456789")]
            assert (await refused(url, extra_headers=stale)).status_code == 401
            async with open_raw_client(url, "env-token-0123456789abcdef0123456789") as raw:
                await raw.initialize()
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


async def test_cli_sigterm_drains_running_process(tmp_path: Path, no_leftover_processes: None) -> None:
    args = [
        "serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(tmp_path / "token"),
        "--sandbox", "none", "--shutdown-grace", "0.2",
    ]  # fmt: skip
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            token = (tmp_path / "token").read_text().strip()
            async with open_raw_client(url, token) as raw:
                await raw.initialize()
                pid = (await raw.start("long", ["sleep", "60"]))["pid"]
                cli.process.send_signal(signal.SIGTERM)
                # The client still gets the terminal events of its process before the close.
                events = await raw.events_for("long")
                exited = [e.params for e in events if e.kind == "exited"]
                assert exited and exited[0]["signal"] == "SIGKILL"
                await raw.wait_until(lambda: raw.closed is not None)
                assert raw.closed is not None and raw.closed.reason.code == 1001
            assert await cli.process.wait() == 0
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_accepted_socket_has_tcp_nodelay(server: Any, no_leftover_processes: None) -> None:
    """Protocol §1: TCP_NODELAY on every accepted socket (small frames must not wait for Nagle)."""
    with trio.fail_after(10):
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            (connection,) = server.server.connections
            # Reaching the accepted socket takes private attributes: transport → websocket → stream.
            sock = connection._transport._websocket._stream.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
