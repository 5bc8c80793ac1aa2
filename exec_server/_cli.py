"""``exec-server``: serve on WebSocket or stdio, or try one command end to end."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from urllib.parse import urlsplit

import trio

from protocol import SandboxMode

from ._auth import DEFAULT_TOKEN_FILE, load_or_create_token
from ._config import ServerConfig
from ._server import CLOSE_HANDSHAKE_SECONDS, Server
from ._stdio import serve_stdio
from ._websocket import serve_websocket
from .sandbox import Sandbox, SandboxSettings

log = logging.getLogger("exec_server")
DEFAULT_LISTEN = "ws://127.0.0.1:8765"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exec-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the exec protocol")
    _add_server_options(serve)
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help="ws://HOST:PORT (port 0 picks one) or stdio")
    try_ = commands.add_parser("try", help="start a server on a free loopback port and run one command through it")
    _add_server_options(try_)
    try_.add_argument("argv", nargs=argparse.REMAINDER, help="the command (default: a short demo)")
    return parser


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-file", type=Path, help="token file (created with mode 0600 if missing)")
    parser.add_argument(
        "--sandbox",
        choices=[mode.value for mode in SandboxMode],
        default=SandboxMode.READ_ONLY.value,
        help="policy for requests that name none (default readOnly)",
    )
    parser.add_argument("--allow-unsandboxed", action="store_true", help='allow requests for sandbox mode "none"')
    parser.add_argument("--audit-denials", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--slow-consumer-timeout", type=float, default=10.0, metavar="S")
    parser.add_argument("--detached-session-ttl", type=float, default=30.0, metavar="S")
    parser.add_argument("--retain-bytes", type=int, default=8 * 1024 * 1024, metavar="N")
    parser.add_argument("--retain-total-bytes", type=int, default=256 * 1024 * 1024, metavar="N")
    parser.add_argument("--shutdown-grace", type=float, default=10.0, metavar="S")
    parser.add_argument("--log-level", default="INFO")


def _masked_paths(token_path: Path | None) -> tuple[str, ...]:
    """What sandboxed commands must never read: the token file, and its directory and the
    default config directory when they are private to this user -- not a shared /tmp, and
    not the home directory or one of its parents (that would hide the user's tools)."""
    files = [DEFAULT_TOKEN_FILE.expanduser()] + ([token_path] if token_path is not None else [])
    masked = [str(path.absolute()) for path in files]
    home = Path("~").expanduser().absolute()
    for directory in {path.absolute().parent for path in files}:
        try:
            info = directory.stat()
        except OSError:
            continue
        private = info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if private and directory != home and directory not in home.parents:
            masked.append(str(directory))
    return tuple(masked)


def _config(args: argparse.Namespace, token: str, token_path: Path | None = None) -> ServerConfig:
    return ServerConfig(
        token=token,
        sandbox=SandboxSettings(
            default_mode=SandboxMode(args.sandbox),
            allow_unsandboxed=args.allow_unsandboxed or args.sandbox == SandboxMode.NONE.value,
            audit_denials=args.audit_denials,
            masked_paths=_masked_paths(token_path),
        ),
        slow_consumer_timeout=args.slow_consumer_timeout,
        detached_session_ttl=args.detached_session_ttl,
        retain_bytes=args.retain_bytes,
        retain_total_bytes=args.retain_total_bytes,
        shutdown_grace=args.shutdown_grace,
    )


async def _serve(args: argparse.Namespace, config: ServerConfig) -> None:
    server = Server(config, Sandbox.create(config.sandbox))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        listen = urlsplit(args.listen) if args.listen != "stdio" else None
        if listen is None:
            nursery.start_soon(_serve_stdio_then_stop, server)
            listener_scope = None
        else:
            if listen.scheme != "ws" or listen.hostname is None or listen.port is None:
                raise SystemExit(f"exec-server: --listen must be ws://HOST:PORT or stdio, not {args.listen!r}")
            listener_scope = trio.CancelScope()
            ws_server = await nursery.start(_listen, server, listen.hostname, listen.port, listener_scope)
            host = listen.hostname if ":" not in listen.hostname else f"[{listen.hostname}]"
            print(f"ws://{host}:{ws_server.port}", flush=True)
        await _handle_signals(server, listener_scope)
        if listener_scope is not None:
            listener_scope.cancel()
        # Let the server close its connections (1001) before anything is cancelled.
        with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS + 1):
            await server.finished.wait()
        nursery.cancel_scope.cancel()


async def _listen(server: Server, host: str, port: int, scope: trio.CancelScope, *, task_status: trio.TaskStatus) -> None:
    with scope:
        await serve_websocket(server, host, port, task_status=task_status)


async def _serve_stdio_then_stop(server: Server) -> None:
    await serve_stdio(server)
    await server.shutdown(grace=0)


async def _handle_signals(server: Server, listener_scope: trio.CancelScope | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_stopped, server, nursery.cancel_scope)
            first = True
            async for signum in signals:
                if first:
                    log.info("%s: draining (grace %.1fs)", signal.Signals(signum).name, server.config.shutdown_grace)
                    if listener_scope is not None:
                        listener_scope.cancel()
                    nursery.start_soon(server.shutdown)
                    first = False
                else:
                    log.info("second signal: killing every process tree")
                    server.kill_everything()
                    server.stop()


async def _wait_stopped(server: Server, scope: trio.CancelScope) -> None:
    await server.stopped.wait()
    scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "try":
        from ._try import try_command

        return try_command(args, _config)
    try:
        token, token_path = load_or_create_token(args.token_file)
    except (OSError, ValueError) as exc:
        print(f"exec-server: cannot load the token: {exc}", file=sys.stderr)
        return 2
    if token_path is not None:
        print(f"exec-server: token in {token_path}", file=sys.stderr, flush=True)
    try:
        trio.run(_serve, args, _config(args, token, token_path))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
