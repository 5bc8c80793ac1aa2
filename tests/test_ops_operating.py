"""Operating the server: TLS, unix sockets, /healthz and /metrics, logs, config files, named
tokens, SIGHUP and --version — each through the real CLI or a real loopback server."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import secrets
import signal
import ssl
import stat
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
import trustme
from prometheus_client.parser import text_string_to_metric_families

from exec_server._config import SERVER_VERSION
from rawclient import REPO_ROOT, RawClient, cli_env, client, no_leftover_processes, open_raw_client, output_of, run_cli_server  # noqa: F401


def _token() -> str:
    return secrets.token_urlsafe(32)


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _serve_args(tmp_path: Path, *extra: str, token: str | None = None) -> list[str]:
    args = ["serve", "--sandbox", "none", "--audit-denials", "off", *extra]
    if "--tokens-file" not in extra and "--token-file" not in extra:
        args += ["--token-file", str(_private(tmp_path / "token", (token or _token()) + "\n"))]
    if "--listen" not in extra:
        args += ["--listen", "ws://127.0.0.1:0"]
    return args


@contextlib.asynccontextmanager
async def raw_over(websocket: trio_websocket.WebSocketConnection) -> AsyncIterator[RawClient]:
    client = RawClient(websocket)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._read_loop)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


def _quiet_collect() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET on loopback; the status, headers (lower-case) and body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while chunk := await stream.receive_some(65536):
        answer += chunk
    await stream.aclose()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Any:
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1", "localhost")
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "server.key").chmod(0o600)
    return authority


async def _tls_upgrade_answer(url: str, context: ssl.SSLContext, token: str) -> bytes:
    """Send an authenticated upgrade over a raw TLS stream; everything the server answers.

    (trio-websocket's client hangs when the TLS handshake fails, so this is done by hand.)
    """
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    try:
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        await stream.send_all(request.encode())
        answer = b""
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(4096):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        return answer
    finally:
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await trio.aclose_forcefully(stream)


async def test_wss_with_a_self_signed_certificate(tmp_path: Path, ca: Any, no_leftover_processes: None) -> None:
    token = _token()
    args = _serve_args(
        tmp_path, "--listen", "wss://127.0.0.1:0",
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"), token=token,
    )  # fmt: skip
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            assert url.startswith("wss://127.0.0.1:")
            headers = [(b"Authorization", f"Bearer {token}".encode())]
            async with trio_websocket.open_websocket_url(url, ssl_context=client_context, extra_headers=headers) as ws:
                async with raw_over(ws) as raw:
                    await raw.initialize()
                    assert output_of(await raw.run("tls", ["echo", "over-tls"])) == b"over-tls\n"
            # A client that does not trust the CA gets no connection.
            with pytest.raises(trio.BrokenResourceError):
                await _tls_upgrade_answer(url, ssl.create_default_context(), token)
            _quiet_collect()
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


async def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path, ca: Any, no_leftover_processes: None) -> None:
    token = _token()
    args = _serve_args(
        tmp_path, "--listen", "wss://127.0.0.1:0",
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
        "--tls-client-ca", str(tmp_path / "ca.pem"), token=token,
    )  # fmt: skip
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            try:
                answer = await _tls_upgrade_answer(url, anonymous, token)
            except trio.BrokenResourceError:
                answer = b""  # the refusal came as a TLS alert
            assert answer == b"", answer[:100]
            assert b"connection accepted" not in cli.stderr
            with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            ca.issue_cert("client.example").configure_cert(with_cert)
            async with trio_websocket.open_websocket_url(url, ssl_context=with_cert, extra_headers=headers) as ws:
                async with raw_over(ws) as raw:
                    await raw.initialize()
                    assert output_of(await raw.run("m", ["echo", "mutual"])) == b"mutual\n"
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


# --- unix sockets ----------------------------------------------------------------------------


@pytest.mark.parametrize(("mode_args", "mode"), [((), 0o600), (("--unix-mode", "660"), 0o660)])
async def test_unix_socket_server(tmp_path: Path, mode_args: tuple[str, ...], mode: int, no_leftover_processes: None) -> None:
    token = _token()
    path = tmp_path / "exec.sock"
    args = _serve_args(tmp_path, "--listen", f"unix:{path}", *mode_args, token=token)
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            assert (await cli.stdout_line()).decode() == f"unix:{path}"
            info = path.lstat()
            assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == mode
            assert info.st_uid == os.geteuid()
            stream = await trio.open_unix_socket(str(path))
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, "localhost", "/", extra_headers=[(b"Authorization", f"Bearer {token}".encode())]
                )
                async with raw_over(ws) as raw:
                    await raw.initialize()
                    assert output_of(await raw.run("u", ["echo", "via-unix"])) == b"via-unix\n"
                await ws.aclose()
            await stream.aclose()
            assert b"uid=0" in cli.stderr or f"uid={os.geteuid()}".encode() in cli.stderr  # the peer, in the log
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


# --- listen errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    ["ws://127.0.0.1", "http://127.0.0.1:1", "wss://127.0.0.1:0", "unix:relative.sock", "ws://[::1", "ws://h:1/path", ""],
)
async def test_invalid_listen_is_one_line_and_exit_2(tmp_path: Path, listen: str) -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "exec_server", *_serve_args(tmp_path, "--listen", listen)],
            env=cli_env(), cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    text = done.stderr.decode()
    assert "Traceback" not in text and text.count("\n") == 1, text
    assert done.stdout == b""


async def test_non_loopback_ws_warns_once(tmp_path: Path, no_leftover_processes: None) -> None:
    args = _serve_args(tmp_path, "--listen", "ws://0.0.0.0:0", "--listen", "ws://0.0.0.0:0")
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            await cli.stdout_line()
            await cli.stdout_line()
            await cli.wait_stderr(b"clear text")
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
    assert cli.stderr.count(b"clear text") == 1


# --- /healthz and /metrics -------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_healthz_needs_no_token_and_says_nothing_else(server: Any) -> None:
    with trio.fail_after(10):
        status, headers, body = await http_get(_port(server.url), "/healthz")
        assert (status, body) == (200, b"ok\n")
        assert headers["content-type"].startswith("text/plain")
        status, _, _ = await http_get(_port(server.url), "/elsewhere")
        assert status == 404


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_need_the_token_and_move_when_a_command_runs(server: Any, no_leftover_processes: None) -> None:
    port = _port(server.url)
    with trio.fail_after(20):
        status, headers, _ = await http_get(port, "/metrics")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        status, _, _ = await http_get(port, "/metrics", {"Authorization": "Bearer wrong"})
        assert status == 401
        auth = {"Authorization": f"Bearer {server.token}"}
        status, headers, body = await http_get(port, "/metrics", auth)
        assert status == 200 and headers["content-type"].startswith("text/plain")
        before = _samples(body.decode())
        async with open_raw_client(server.url, server.token) as raw:
            await raw.initialize()
            await raw.run("m", ["sh", "-c", "printf 12345; printf ab >&2"])
            await raw.expect_error("process/start", {"processId": "bad", "argv": ["/nonexistent/x"]}, -32007)
            # A takeover is a resume (robust whatever a clean close does to the session).
            async with open_raw_client(server.url, server.token) as second:
                await second.initialize(resumeSessionId=raw.initialize_result["sessionId"])  # type: ignore[index]
                _, _, body = await http_get(port, "/metrics", auth)
            during = _samples(body.decode())
            assert during[("exec_server_open_connections", ())] >= 1
            assert during[("exec_server_sessions", (("state", "attached"),))] >= 1
        after = during

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("exec_server_processes_started_total", token="default") == 1
        assert delta("exec_server_processes_failed_total", reason="spawn_failed") == 1
        assert delta("exec_server_output_bytes_total", stream="stdout") == 5
        assert delta("exec_server_output_bytes_total", stream="stderr") == 2
        assert delta("exec_server_spawn_seconds_count") == 1
        assert delta("exec_server_completion_seconds_count") == 1
        assert delta("exec_server_connections_total", result="accepted", reason="ok") == 2
        assert delta("exec_server_resumes_total") == 1


async def test_metrics_listen_serves_metrics_without_a_token(tmp_path: Path, no_leftover_processes: None) -> None:
    with trio.fail_after(30):
        async with run_cli_server(_serve_args(tmp_path, "--metrics-listen", "127.0.0.1:0", "--log-level", "INFO"), cli_env()) as cli:
            await cli.stdout_line()
            await cli.wait_stderr(b"/metrics\n")
            line = next(line for line in cli.stderr.decode().splitlines() if "metrics on http://" in line)
            port = int(line.rsplit(":", 1)[1].split("/")[0])
            status, _, body = await http_get(port, "/metrics")
            assert status == 200 and b"exec_server_processes_started_total" in body
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


# --- logs ----------------------------------------------------------------------------------


async def test_json_log_lines_for_a_command_start_and_close(tmp_path: Path, no_leftover_processes: None) -> None:
    token = _token()
    secret_value = "value-" + secrets.token_hex(8)
    with trio.fail_after(30):
        async with run_cli_server(_serve_args(tmp_path, "--log-format", "json", token=token), cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, token) as raw:
                await raw.initialize()
                session = raw.initialize_result["sessionId"]  # type: ignore[index]
                await raw.run("j", ["sh", "-c", "echo out; exit 3"], env={"API_SECRET": secret_value}, cwd=str(tmp_path))
            await cli.wait_stderr(b'"command closed"')
            assert await _refused_status(url, "x" * 40) == 401
            await cli.wait_stderr(b'"unauthorized"')
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
    lines = [json.loads(line) for line in cli.stderr.decode().splitlines()]  # every line is one object
    (refusal,) = [line for line in lines if line.get("event") == "connection.refused"]
    assert refusal["reason"] == "unauthorized" and refusal["peer"].startswith("127.0.0.1:")
    (start,) = [line for line in lines if line.get("event") == "command.start"]
    (close,) = [line for line in lines if line.get("event") == "command.close"]
    assert start["session"] == session and start["process"] == "j" and start["token"] == "default"
    assert start["peer"].startswith("127.0.0.1:") and start["argv"] == ["sh", "-c", "echo out; exit 3"]
    assert start["cwd"] == str(tmp_path) and start["policy"] == {"mode": "none"} and start["envNames"] == ["API_SECRET"]
    assert close["session"] == session and close["process"] == "j" and close["token"] == "default"
    assert (close["exitCode"], close["signal"], close["denials"], close["outputBytes"]) == (3, None, [], 4)
    assert close["durationMs"] > 0 and close["delivery"] in ("attached", "retained")
    assert any(line.get("event") == "connection.accepted" for line in lines)
    assert token.encode() not in cli.stderr and secret_value.encode() not in cli.stderr


# --- config files -------------------------------------------------------------------------


async def test_a_config_file_sets_a_limit_that_a_request_hits(tmp_path: Path, no_leftover_processes: None) -> None:
    token = _token()
    config = tmp_path / "exec-server.toml"
    config.write_text('max-processes-per-session = 1\nlisten = ["ws://127.0.0.1:0"]\nlog-format = "json"\n')
    args = ["serve", "--config", str(config), "--sandbox", "none", "--token-file", str(_private(tmp_path / "token", token))]
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, token) as raw:
                await raw.initialize()
                assert raw.initialize_result["limits"]["maxProcessesPerSession"] == 1  # type: ignore[index]
                await raw.start("one", ["sleep", "30"])
                error = await raw.expect_error("process/start", {"processId": "two", "argv": ["true"]}, -32005)
                assert "at most 1 processes" in error.message
                await raw.call("process/terminate", {"processId": "one", "graceMs": 0})
                await raw.events_for("one")
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
    json.loads(cli.stderr.decode().splitlines()[0])  # log-format came from the file too


async def test_config_command_prints_flags_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('retain-bytes = 1000\nshutdown-grace = 3\nallow-origin = ["https://a.example"]\n')
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "exec_server", "config", "--config", str(config), "--shutdown-grace", "7"],
            env=cli_env(), cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True,
        )  # fmt: skip
    import tomllib

    printed = tomllib.loads(done.stdout.decode())
    assert printed["retain-bytes"] == 1000 and printed["shutdown-grace"] == 7.0
    assert printed["allow-origin"] == ["https://a.example"] and printed["max-sessions"] == 4096
    # What it prints is itself a valid config file.
    (tmp_path / "printed.toml").write_text(done.stdout.decode())
    again = await trio.run_process(
        [sys.executable, "-m", "exec_server", "config", "--config", str(tmp_path / "printed.toml")],
        env=cli_env(), cwd=REPO_ROOT, capture_stdout=True,
    )  # fmt: skip
    assert again.stdout == done.stdout


@pytest.mark.parametrize(
    ("content", "complaint"),
    [("no-such-key = 1\n", "unknown key"), ("retain-bytes = 'x'\n", "retain-bytes"), ("retain-bytes = \n", "not TOML")],
)
async def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, content: str, complaint: str) -> None:
    (tmp_path / "c.toml").write_text(content)
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "exec_server", *_serve_args(tmp_path, "--config", str(tmp_path / "c.toml"))],
            env=cli_env(), cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert complaint in done.stderr.decode() and done.stderr.decode().count("\n") == 1


# --- named tokens and SIGHUP -----------------------------------------------------------------


async def test_named_tokens_show_in_the_log_and_carry_their_ceiling(tmp_path: Path, no_leftover_processes: None) -> None:
    ci, agent = _token(), _token()
    tokens = _private(tmp_path / "tokens", f"# who may connect\nci {ci}\nagent {agent} readOnly\n")
    args = _serve_args(tmp_path, "--tokens-file", str(tokens), "--allow-unsandboxed", "--log-format", "json")
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, ci) as raw:
                await raw.initialize()
                assert output_of(await raw.run("c", ["echo", "ci"], sandbox={"mode": "none"})) == b"ci\n"
            async with open_raw_client(url, agent) as raw:
                await raw.initialize()
                error = await raw.expect_error(
                    "process/start", {"processId": "a", "argv": ["true"], "sandbox": {"mode": "none"}}, -32006
                )
                assert "client's ceiling" in error.message and "readOnly" in error.message
            await cli.wait_stderr(b'"command closed"')
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0
    lines = [json.loads(line) for line in cli.stderr.decode().splitlines()]
    assert [line["token"] for line in lines if line.get("event") == "command.start"] == ["ci"]
    assert {line["token"] for line in lines if line.get("event") == "connection.accepted"} == {"ci", "agent"}
    assert ci.encode() not in cli.stderr and agent.encode() not in cli.stderr


async def _refused_status(url: str, token: str) -> int | None:
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=[(b"Authorization", f"Bearer {token}".encode())]):
            return None
    except trio_websocket.ConnectionRejected as exc:
        return int(exc.status_code)
    finally:
        _quiet_collect()


@pytest.mark.parametrize("form", ["--token-file", "--tokens-file"])
async def test_sighup_rotates_the_token_without_dropping_connections(
    tmp_path: Path, form: str, no_leftover_processes: None
) -> None:
    old, new = _token(), _token()
    path = tmp_path / "secret"
    line = (lambda token: f"{token}\n") if form == "--token-file" else (lambda token: f"ci {token}\n")
    _private(path, line(old))
    args = _serve_args(tmp_path, form, str(path))
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, old) as raw:
                await raw.initialize()
                await raw.start("long", ["sh", "-c", "read x; echo got-$x"], pipeStdin=True)
                # Rotate: write the new file beside it and rename it into place.
                _private(tmp_path / "secret.new", line(new))
                os.replace(tmp_path / "secret.new", path)
                cli.process.send_signal(signal.SIGHUP)
                await cli.wait_stderr(b"reloaded")
                # The connected client keeps working.
                await raw.call("process/write", {"processId": "long", "chunk": "b2sK", "eof": True})
                assert output_of(await raw.events_for("long")) == b"got-ok\n"
                assert output_of(await raw.run("after", ["echo", "still"])) == b"still\n"
            assert await _refused_status(url, old) == 401
            assert await _refused_status(url, new) is None
            # A broken file on the next SIGHUP keeps the server and the token in force.
            path.chmod(0o644)
            cli.process.send_signal(signal.SIGHUP)
            await cli.wait_stderr(b"reload failed")
            assert cli.process.returncode is None
            assert await _refused_status(url, new) is None
            # So does a file that is gone (no new token is made up on a reload).
            path.unlink()
            cli.process.send_signal(signal.SIGHUP)
            await cli.wait_stderr(b"does not exist")
            assert not path.exists() and await _refused_status(url, new) is None
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


# --- version -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["exec_server", "--version"], ["exec_server", "serve", "--version"], ["exec_client", "--version"]])
async def test_version(argv: list[str]) -> None:
    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-m", *argv], env=cli_env(), cwd=REPO_ROOT, capture_stdout=True)
    name = argv[0].replace("_", "-")
    assert done.stdout.decode().strip() == f"{name} {SERVER_VERSION}"


async def test_initialize_reports_the_version(client: Any) -> None:
    assert client.initialize_result["serverVersion"] == SERVER_VERSION


async def test_sighup_applies_a_changed_config_file_to_new_connections(tmp_path: Path, no_leftover_processes: None) -> None:
    token = _token()
    config = tmp_path / "c.toml"
    config.write_text("max-processes-per-session = 1\nretain-total-bytes = 268435456\n")
    args = _serve_args(tmp_path, "--config", str(config), token=token)
    with trio.fail_after(30):
        async with run_cli_server(args, cli_env()) as cli:
            url = (await cli.stdout_line()).decode()
            async with open_raw_client(url, token) as before:
                await before.initialize()
                config.write_text("max-processes-per-session = 3\nretain-total-bytes = 1048576\n")
                cli.process.send_signal(signal.SIGHUP)
                await cli.wait_stderr(b"reloaded")
                async with open_raw_client(url, token) as after:
                    result = await after.initialize()
                    assert result["limits"]["maxProcessesPerSession"] == 3
                    # Not reloadable: it stays, and the log says a restart is needed.
                    assert result["limits"]["retainTotalBytes"] == 268435456
                assert output_of(await before.run("b", ["echo", "kept"])) == b"kept\n"
            assert b"retain-total-bytes changed; that takes a restart" in cli.stderr
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 0


def test_the_secret_files_are_named_for_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exec_server._cli import _plan, _secret_paths, resolve, _parser

    monkeypatch.delenv("EXEC_SERVER_TOKEN", raising=False)
    real = _private(tmp_path / "real-tokens", f"ci {_token()}\n")
    (tmp_path / "tokens").symlink_to(real)
    args = _parser().parse_args([
        "serve", "--tokens-file", str(tmp_path / "tokens"), "--token-file", str(tmp_path / "token"),
        "--listen", "wss://127.0.0.1:0", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"),
    ])  # fmt: skip
    paths = _secret_paths(_plan(resolve(args)))
    assert set(paths) == {str(tmp_path / name) for name in ("tokens", "real-tokens", "token", "k.pem")}


async def test_in_process_wss_server(nursery: trio.Nursery, tmp_path: Path, ca: Any, no_leftover_processes: None) -> None:
    """``serve_websocket(..., ssl_context=...)``: the in-process form other tests can build on."""
    from conftest import UNSANDBOXED

    from exec_server import Server, ServerConfig
    from exec_server._websocket import serve_websocket
    from exec_server.sandbox import Sandbox

    config = ServerConfig(token=_token(), sandbox=UNSANDBOXED)
    server = Server(config, Sandbox.create(config.sandbox))
    await nursery.start(server.run)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    bound = await nursery.start(lambda task_status: serve_websocket(server, "127.0.0.1", 0, ssl_context=context, task_status=task_status))
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    headers = [(b"Authorization", f"Bearer {config.token}".encode())]
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(f"wss://127.0.0.1:{bound.port}", ssl_context=client_context, extra_headers=headers) as ws:
            async with raw_over(ws) as raw:
                await raw.initialize()
                assert output_of(await raw.run("w", ["echo", "in-process"])) == b"in-process\n"
