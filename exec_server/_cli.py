"""``exec-server``: serve on WebSocket (ws, wss, unix) or stdio, try one command end to end,
or print the effective configuration.

Start-up order matters: the configuration, the listen addresses and the tokens are checked
first (a bad one is one line on stderr and exit 2); signal handlers are installed before any
listener is bound, so a SIGTERM that follows the printed URL always drains.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from . import _logging, _metrics
from ._config import (
    SERVER_VERSION,
    SETTINGS,
    ConfigError,
    ServerConfig,
    effective,
    read_config_file,
    render_toml,
    server_config,
)
from ._listen import (
    ListenAddress,
    ListenError,
    TlsFiles,
    bound_urls,
    open_tcp,
    open_unix,
    parse_listen,
    remove_unix_socket,
    tls_context,
)
from ._server import CLOSE_HANDSHAKE_SECONDS, Server
from ._stdio import serve_stdio
from ._tokens import DEFAULT_TOKEN_FILE, TOKEN_ENV, TokenFileError, TokenSource, TokenStore
from ._websocket import WebSocketOptions, WebSocketService
from .sandbox import Sandbox

log = logging.getLogger("exec_server")
EXIT_USAGE: Final = 2
# With no hard limit, the soft one is raised to this (the kernel's usual nr_open).
_NOFILE_CAP: Final = 1 << 20


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exec-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"exec-server {SERVER_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the exec protocol")
    _add_server_options(serve)
    try_ = commands.add_parser("try", help="start a server on a free loopback port and run one command through it")
    _add_server_options(try_)
    try_.add_argument("argv", nargs=argparse.REMAINDER, help="the command (default: a short demo)")
    config = commands.add_parser("config", help="print the effective configuration (flags over --config file) as TOML")
    _add_server_options(config)
    return parser


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"exec-server {SERVER_VERSION}")
    for setting in SETTINGS:
        flag = f"--{setting.key}"
        help_text = setting.help
        if setting.default not in (None, (), False) and "default" not in help_text:
            shown = f"{setting.default:o}" if setting.key == "unix-mode" else setting.default
            help_text += f" (default {', '.join(shown) if isinstance(shown, tuple) else shown})"
        if setting.is_switch:
            parser.add_argument(flag, dest=setting.dest, action="store_const", const=True, default=None, help=help_text)
        elif setting.repeatable:
            parser.add_argument(flag, dest=setting.dest, action="append", default=None, metavar=setting.metavar, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=setting.dest,
                type=setting.parse,
                choices=setting.choices,
                default=None,
                metavar=setting.metavar,
                help=help_text,
            )


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The effective settings of a parsed command line (with its ``--config`` file).

    Raises:
        ConfigError: the file cannot be used.
    """
    flags = {}
    for setting in SETTINGS:
        value = getattr(args, setting.dest, None)
        flags[setting.key] = tuple(value) if isinstance(value, list) else value
    config_path = flags["config"]
    file_values = read_config_file(config_path) if isinstance(config_path, Path) else {}
    return effective(file_values, flags)


def _config(args: argparse.Namespace, token: str) -> ServerConfig:
    """The ``ServerConfig`` of a parsed command line (used by ``try`` too)."""
    return server_config(resolve(args), token)


@attrs.frozen(kw_only=True)
class _Plan:
    """Everything ``serve`` checked before starting."""

    values: dict[str, Any]
    addresses: list[ListenAddress]
    tls: TlsFiles | None
    metrics: ListenAddress | None
    source: TokenSource


def _plan(values: Mapping[str, Any]) -> _Plan:
    """Check the listen addresses and TLS files.

    Raises:
        ListenError: one line for the operator.
    """
    addresses = [parse_listen(value) for value in values["listen"]]
    tls = None
    if values["tls-cert"] is not None or values["tls-key"] is not None:
        if values["tls-cert"] is None or values["tls-key"] is None:
            raise ListenError("--tls-cert and --tls-key go together")
        tls = TlsFiles(cert=values["tls-cert"], key=values["tls-key"], client_ca=values["tls-client-ca"])
    elif values["tls-client-ca"] is not None:
        raise ListenError("--tls-client-ca needs --tls-cert and --tls-key")
    if any(address.scheme == "wss" for address in addresses) and tls is None:
        raise ListenError("wss:// needs --tls-cert and --tls-key")
    if sum(address.scheme == "stdio" for address in addresses) > 1:
        raise ListenError("--listen stdio can be given once")
    metrics = None
    if values["metrics-listen"] is not None:
        metrics = parse_listen(values["metrics-listen"], schemes=("http",))
    source = TokenSource(
        env_token=os.environ.get(TOKEN_ENV) or None,
        token_file=values["token-file"],
        tokens_file=values["tokens-file"],
    )
    return _Plan(values=dict(values), addresses=addresses, tls=tls, metrics=metrics, source=source)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one, so connections and pipes do not run out early.

    Returns:
        The (soft, hard) limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def _websocket_options(values: Mapping[str, Any]) -> WebSocketOptions:
    return WebSocketOptions(
        max_pending_handshakes=values["max-pending-handshakes"],
        handshake_timeout=values["handshake-timeout"],
        allow_origins=frozenset(values["allow-origin"]),
    )


class _Running:
    """The serving process's state that a reload (SIGHUP) replaces."""

    def __init__(self, plan: _Plan, server: Server, tokens: TokenStore, flags: dict[str, Any]) -> None:
        self.plan = plan
        self.server = server
        self.tokens = tokens
        self.flags = flags
        self.services: list[WebSocketService] = []

    def reload(self) -> None:
        """Re-read the token files and the config file; a failure keeps what is in force."""
        try:
            # A token file that vanished is an error now, not a reason to make a new token.
            entries = attrs.evolve(self.plan.source, create=False).load()
            values = self.plan.values
            if values["config"] is not None:
                values = effective(read_config_file(values["config"]), self.flags)
            new_config = server_config(values, next(iter(entries)), self.server.config.secret_paths, self.server.config.sandbox.masked_paths)
        except (TokenFileError, ConfigError, OSError, ValueError) as exc:
            _metrics.record_reload(False)
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.tokens.replace(entries)
        restart_needed = sorted(
            setting.key
            for setting in SETTINGS
            if not setting.reloadable and setting.key != "config" and values[setting.key] != self.plan.values[setting.key]
        )
        if restart_needed:
            log.warning("reload: %s changed; that takes a restart", ", ".join(restart_needed))
        # New connections and sessions read the new limits; live ones keep theirs.
        self.server.config = attrs.evolve(
            new_config, sandbox=self.server.config.sandbox, retain_total_bytes=self.server.config.retain_total_bytes
        )
        for service in self.services:
            service.options = _websocket_options(values)
        _logging.configure(values["log-level"], values["log-format"])
        in_force = {key: value if key not in restart_needed else self.plan.values[key] for key, value in values.items()}
        self.plan = attrs.evolve(self.plan, values=in_force)
        _metrics.record_reload(True)
        log.info("reloaded: %d token(s) (%s)", len(entries), ", ".join(sorted(p.name for p in entries.values())))


async def _serve(plan: _Plan, config: ServerConfig, tokens: TokenStore, flags: dict[str, Any]) -> None:
    server = Server(config, Sandbox.create(config.sandbox))
    running = _Running(plan, server, tokens, flags)
    # Installed before anything is bound or printed: a SIGTERM right after the URL drains.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            listener_scope = trio.CancelScope()
            urls = await nursery.start(_listen_all, running, listener_scope)
            for url in urls:
                print(url, flush=True)
            if any(address.scheme == "stdio" for address in plan.addresses):
                nursery.start_soon(_serve_stdio_then_stop, server)
            await _handle_signals(running, signals, listener_scope)
            listener_scope.cancel()
            # Let the server close its connections (1001) before anything is cancelled.
            with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS + 1):
                await server.wait_stopped()
            nursery.cancel_scope.cancel()


async def _listen_all(running: _Running, scope: trio.CancelScope, *, task_status: trio.TaskStatus[list[str]]) -> None:
    plan = running.plan
    options = _websocket_options(plan.values)
    tls = tls_context(plan.tls) if plan.tls is not None else None
    urls: list[str] = []
    warned = False
    unix_paths: list[str] = []
    with scope:
        try:
            async with trio.open_nursery() as nursery:
                service = WebSocketService(running.server, running.tokens, options)
                running.services.append(service)
                for address in plan.addresses:
                    if address.scheme == "stdio":
                        continue
                    if address.scheme == "unix":
                        listeners: list[trio.abc.Listener[trio.abc.Stream]] = [open_unix(address.path, plan.values["unix-mode"])]
                        unix_paths.append(address.path)
                    else:
                        listeners = await open_tcp(address, tls if address.scheme == "wss" else None)
                    if address.scheme == "ws" and not address.is_loopback and not warned:
                        warned = True
                        log.warning("%s is not a loopback address: the token travels in clear text (use wss://)", address)
                    urls.extend(bound_urls(address, listeners))
                    await nursery.start(service.serve, listeners)
                if plan.metrics is not None:
                    metrics_service = WebSocketService(running.server, running.tokens, options, upgrades=False)
                    running.services.append(metrics_service)
                    metrics_listeners = await open_tcp(plan.metrics)
                    log.info("metrics on %s", ", ".join(f"{url}/metrics" for url in bound_urls(plan.metrics, metrics_listeners)))
                    await nursery.start(metrics_service.serve, metrics_listeners)
                task_status.started(urls)
        finally:
            for path in unix_paths:
                remove_unix_socket(path)


async def _serve_stdio_then_stop(server: Server) -> None:
    await serve_stdio(server)
    await server.shutdown(grace=0)


async def _handle_signals(running: _Running, signals: Any, listener_scope: trio.CancelScope) -> None:
    server = running.server
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_wait_stopped, server, nursery.cancel_scope)
        draining = False
        async for signum in signals:
            if signum == signal.SIGHUP:
                running.reload()
            elif not draining:
                log.info("%s: draining (grace %.1fs)", signal.Signals(signum).name, server.config.shutdown_grace)
                listener_scope.cancel()
                nursery.start_soon(server.shutdown)
                draining = True
            else:
                log.info("second signal: killing every process tree")
                server.kill_everything()
                server.stop()


async def _wait_stopped(server: Server, scope: trio.CancelScope) -> None:
    await server.wait_closing()
    scope.cancel()


def _masked_paths(secret_paths: tuple[str, ...]) -> tuple[str, ...]:
    """What sandboxed commands must never read: the token file, and its directory and the
    default config directory when they are private to this user -- not a shared /tmp, and
    not the home directory or one of its parents (that would hide the user's tools)."""
    files = [DEFAULT_TOKEN_FILE.expanduser(), *(Path(path) for path in secret_paths)]
    masked = sorted({str(path.absolute()) for path in files})
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


def _secret_paths(plan: _Plan) -> tuple[str, ...]:
    """The token files and the TLS key, resolved (a sandbox hides them from every command)."""
    paths = [*plan.source.files(), *([plan.tls.key] if plan.tls is not None else [])]
    # Both the named path and where it leads: a Kubernetes Secret's ..data link moves on rotation.
    return tuple(sorted({os.path.abspath(path) for path in paths} | {os.path.realpath(path) for path in paths}))


def _fail(message: str) -> int:
    print(f"exec-server: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        values = resolve(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.command == "config":
        sys.stdout.write(render_toml(values))
        return 0
    # `try` is a demo: its own summary says what happened, so only warnings unless asked.
    quiet_try = args.command == "try" and args.log_level is None
    _logging.configure("WARNING" if quiet_try else values["log-level"], values["log-format"])
    if args.command == "try":
        from ._try import try_command

        return try_command(args, _config)
    try:
        plan = _plan(values)
    except ListenError as exc:
        return _fail(str(exc))
    try:
        entries = plan.source.load()
    except (TokenFileError, OSError) as exc:
        return _fail(f"cannot load the token: {exc}")
    for path in plan.source.files():
        _logging.log_event(log, logging.INFO, f"token in {path}", event="token.file", path=str(path))
    if plan.tls is not None:
        try:
            tls_context(plan.tls)
        except (OSError, ValueError) as exc:
            return _fail(f"cannot load the TLS files: {exc}")
    soft, _hard = raise_nofile_limit()
    log.debug("open-file limit %d", soft)
    flags = {setting.key: getattr(args, setting.dest, None) for setting in SETTINGS}
    flags = {key: tuple(value) if isinstance(value, list) else value for key, value in flags.items()}
    try:
        secrets = _secret_paths(plan)
        config = server_config(values, next(iter(entries)), secrets, _masked_paths(secrets))
    except ValueError as exc:  # a value out of range (ServerConfig's and the ceilings' checks)
        return _fail(str(exc))
    try:
        trio.run(_serve, plan, config, TokenStore(entries), flags)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        bind_error = _only_os_error(group)
        if bind_error is None:
            raise
        return _fail(f"cannot listen: {bind_error}")
    except OSError as exc:
        return _fail(f"cannot listen: {exc}")
    return 0


def _only_os_error(group: BaseExceptionGroup[BaseException]) -> OSError | None:
    """The OSError a start-up failure (an address that cannot be bound) consists of, if only that."""
    matched, rest = group.split(OSError)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, OSError) else None


if __name__ == "__main__":
    sys.exit(main())

