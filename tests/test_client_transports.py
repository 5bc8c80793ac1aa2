"""Every transport end to end: unix socket, wss (own CA and system CAs), stdio to a spawned
server, and ssh to a local sshd this test starts with a generated key."""

from __future__ import annotations

import os
import signal
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trio_websocket

import exec_client
from client_flavors import FLAVORS, Flavor
from exec_server._auth import presented_token, token_matches
from exec_server._websocket import WebSocketTransport
from nspid import descendant_running

def server_stdio(directory: Path) -> list[str]:
    """The spawned server's command (its token file stays in ``directory``, not in $HOME)."""
    return [
        sys.executable, "-m", "exec_server", "serve", "--listen", "stdio", "--token-file", str(directory / "token"),
        "--sandbox", "none", "--audit-denials", "off", "--log-level", "WARNING",
    ]  # fmt: skip


async def _serve_ws_on(server: Any, listener: trio.abc.Listener[Any], *, task_status: trio.TaskStatus[None]) -> None:
    """The real session core behind a WebSocket on ``listener`` (what ``serve_websocket`` does on TCP)."""
    token = server.config.token

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        presented, subprotocol = presented_token(request.headers, request.proposed_subprotocols)
        if not token_matches(token, presented):
            await request.reject(401, extra_headers=[(b"WWW-Authenticate", b"Bearer")], body=b"unauthorized\n")
            return
        await server.serve(WebSocketTransport(await request.accept(subprotocol=subprotocol)))

    async def handle_stream(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as ws_nursery:
            try:
                await handle(await trio_websocket.wrap_server_stream(ws_nursery, stream))
            except trio_websocket.ConnectionClosed:
                pass  # a refused client hung up before the 401's body (trio-websocket does the same)
            finally:
                ws_nursery.cancel_scope.cancel()

    # trio-websocket's WebSocketServer.run assumes IP listeners; serve the streams directly.
    await trio.serve_listeners(
        handle_stream, [listener], handler_nursery=server.connection_nursery, task_status=task_status
    )


async def test_unix_socket_transport(server: Any, nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "exec.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    await nursery.start(_serve_ws_on, server.server, trio.SocketListener(sock))
    with trio.fail_after(20):
        async with exec_client.open_client(f"unix:{path}", token=server.token) as client:
            record = await client.run(["sh", "-c", "echo over unix"])
        with pytest.raises(exec_client.ConnectionFailed, match="401"):
            async with exec_client.open_client(f"unix:{path}", token="wrong"):
                pass  # pragma: no cover
    assert (record.exit_code, record.stdout) == (0, b"over unix\n")


def _make_ca_and_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert),
        "-days", "1", "-subj", "/CN=exec-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca_cert, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
async def test_wss_with_a_ca_file_and_the_system_cas(server: Any, nursery: trio.Nursery, tmp_path: Path) -> None:
    ca_cert, cert, key = _make_ca_and_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tcp = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = tcp.socket.getsockname()[1]
    await nursery.start(_serve_ws_on, server.server, trio.SSLListener(tcp, context, https_compatible=True))
    url = f"wss://127.0.0.1:{port}"
    with trio.fail_after(20):
        async with exec_client.open_client(url, token=server.token, ca_file=str(ca_cert)) as client:
            record = await client.run(["echo", "over tls"])
        # The system CAs do not know this CA: the connection is refused, not downgraded.
        with pytest.raises(exec_client.ConnectionFailed, match="certificate verify failed"):
            async with exec_client.open_client(url, token=server.token):
                pass  # pragma: no cover
    assert record.stdout == b"over tls\n"


@pytest.fixture(params=["trio", "sync", "asyncio"])
def stdio_flavor(request: pytest.FixtureRequest) -> Flavor:
    return FLAVORS[request.param]


async def test_stdio_to_a_spawned_server(stdio_flavor: Flavor, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with stdio_flavor.open(None, None, command=server_stdio(tmp_path)) as client:  # type: ignore[arg-type]
            record = await client.run(["sh", "-c", "echo over stdio; echo err >&2; exit 5"], stdin=b"x")
            piped = await client.run(["cat"], stdin=b"\x00\x01 binary-safe through JSON")
    assert (record.exit_code, record.stdout, record.stderr, record.failure) == (5, b"over stdio\n", b"err\n", None)
    assert piped.stdout == b"\x00\x01 binary-safe through JSON"


async def test_a_command_that_cannot_start_is_a_connection_failure() -> None:
    with trio.fail_after(10):
        with pytest.raises(exec_client.ConnectionFailed, match="cannot start"):
            async with exec_client.open_client(command=["/nonexistent/exec-server"]):
                pass  # pragma: no cover


async def test_a_spawned_server_that_dies_fails_the_records_promptly(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with exec_client.open_client(command=server_stdio(tmp_path)) as client:
            handle = await client.start(["sleep", "30"])
            # The spawned server (this test's child) dies; a sandboxed command could not kill it.
            pid = descendant_running(*server_stdio(tmp_path))
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            record = await handle.wait()
    assert record.failure is not None and "exited" in record.failure


# --- ssh to a local sshd ------------------------------------------------------------------------

SSHD: Final = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[tuple[int, list[str]]]:
    """An sshd on a free loopback port that lets this user in with a key made here."""
    assert SSHD is not None
    host_key, user_key = tmp_path / "host_key", tmp_path / "user_key"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text((tmp_path / "user_key.pub").read_text())
    authorized.chmod(0o600)
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nPidFile none\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    process = await trio.lowlevel.open_process([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(10):
            while True:  # until it listens
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        options = ["-i", str(user_key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "LogLevel=ERROR"]  # fmt: skip
        yield port, options
    finally:
        process.terminate()
        with trio.CancelScope(shield=True):
            await process.wait()


@pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None, reason="needs openssh-server and ssh")
async def test_ssh_runs_the_server_over_stdio(sshd: tuple[int, list[str]], tmp_path: Path) -> None:
    port, options = sshd
    user = os.environ.get("USER") or "root"
    with trio.fail_after(60):
        async with exec_client.open_client(
            f"ssh://{user}@127.0.0.1:{port}", command=server_stdio(tmp_path), ssh_options=options
        ) as client:
            record = await client.run("echo over ssh; hostname >/dev/null")
            assert client.info.server_name
    assert (record.exit_code, record.stdout, record.failure) == (0, b"over ssh\n", None)


def test_ssh_urls_become_ssh_commands() -> None:
    from exec_client._transport import parse_target

    target = parse_target("ssh://alice@build.example:2222", command=None, ssh_options=["-i", "k"])
    assert isinstance(target, exec_client._transport.CommandTarget)
    assert target.argv == (
        "ssh", "-T", "-o", "BatchMode=yes", "-i", "k", "-p", "2222", "--", "alice@build.example",
        "exec-server serve --listen stdio",
    )  # fmt: skip
    with pytest.raises(ValueError, match="expected"):
        parse_target("http://x", command=None)
