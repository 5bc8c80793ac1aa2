"""``exec-client run [options] -- CMD ARGS…``: run one command through an exec server.

Streams the command's stdout/stderr to our own as chunks arrive and exits with its exit
code (a signal's ``128+N`` is what ``exitCode`` already holds). ``--json`` prints only the
terminal record. Exit 255: connection/auth failure or a record with ``failure`` set; 127/126
when the program is missing / not executable; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Final, NoReturn

import trio

import protocol as p

from ._client import DEFAULT_URL, Client, open_client
from ._errors import ConnectionFailed, ConnectionLost, ExecClientError, OutputOverrun, ServerError, SpawnFailed
from ._handle import ProcessHandle

DEFAULT_TOKEN_FILE: Final = "~/.config/exec-server/token"
EXIT_CLIENT_FAILURE: Final = 255
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126
_PROG: Final = "exec-client"
_STDIN_READ_BYTES: Final = 256 * 1024


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description="Run commands through an exec server.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {importlib.metadata.version('exec-server')}")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    run = commands.add_parser(
        "run",
        help="run one command and exit with its exit code",
        usage=f"{_PROG} run [options] -- CMD [ARGS...]",
        epilog="exit status: the command's exit code (128+N if killed by signal N); 127/126 if the "
        "program is missing/not executable; 255 if the server cannot be reached, refuses the token, "
        "or the record could not be completed; 2 for usage errors",
    )
    run.add_argument("--url", help=f"server URL (env EXEC_SERVER_URL; default {DEFAULT_URL})")
    run.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"file holding the token (env EXEC_SERVER_TOKEN / EXEC_SERVER_TOKEN_FILE; default {DEFAULT_TOKEN_FILE})",
    )
    run.add_argument("--json", action="store_true", help="print only the terminal record as JSON")
    run.add_argument("--timeout", type=float, metavar="S", help="kill the command's tree after S seconds")
    run.add_argument("--cwd", metavar="DIR", help="working directory on the server host")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set an environment variable")
    run.add_argument(
        "--sandbox",
        choices=[mode.value for mode in p.SandboxMode],
        help="sandbox mode (default: the server's)",
    )
    run.add_argument("--network", action="store_true", help="allow network access inside the sandbox (alone: readOnly + network)")
    run.add_argument("--stdin", action="store_true", help="forward our stdin to the command (else it gets none)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    return parser


def _resolve_token(token_file: str | None) -> str:
    if token_file is None:
        token = os.environ.get("EXEC_SERVER_TOKEN")
        if token:
            return token.strip()
        token_file = os.environ.get("EXEC_SERVER_TOKEN_FILE") or DEFAULT_TOKEN_FILE
    path = Path(token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConnectionFailed(
            f"cannot read the token file {path}: {exc.strerror or exc} (set EXEC_SERVER_TOKEN or --token-file)"
        ) from None
    if not token:
        raise ConnectionFailed(f"the token file {path} is empty")
    return token


def _sandbox(args: argparse.Namespace) -> p.SandboxPolicy | None:
    if args.sandbox is None and not args.network:
        return None
    # --network alone keeps the sandbox (read-only) and opens only the network.
    mode = p.SandboxMode(args.sandbox or p.SandboxMode.READ_ONLY.value)
    return p.SandboxPolicy(mode=mode, network=args.network)


def _env(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _UsageError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def record_json(record: p.TerminalRecord) -> dict[str, Any]:
    """The record as JSON data: camelCase names, output as UTF-8 text with replacement."""
    return {
        "processId": record.process_id,
        "argv": list(record.argv),
        "exitCode": record.exit_code,
        "signal": record.signal,
        "timedOut": record.timed_out,
        "sandboxDenied": record.sandbox_denied,
        "denials": [{"blocker": d.blocker, "target": d.target} for d in record.denials],
        "sandboxDeniedSource": record.sandbox_denied_source,
        "limitExceeded": record.limit_exceeded,
        "stdout": record.stdout.decode("utf-8", errors="replace"),
        "stderr": record.stderr.decode("utf-8", errors="replace"),
        "stdoutOmittedBytes": record.stdout_omitted_bytes,
        "stderrOmittedBytes": record.stderr_omitted_bytes,
        "outputLost": record.output_lost,
        "stdoutLostBytes": record.stdout_lost_bytes,
        "stderrLostBytes": record.stderr_lost_bytes,
        "durationMs": record.duration_ms,
        "usage": p.unstructure(record.usage) if record.usage is not None else None,
        "completion": record.completion.value,
        "readCalls": record.read_calls,
        "failure": record.failure,
    }


def _note(message: str) -> None:
    sys.stderr.write(f"{_PROG}: {message}\n")
    sys.stderr.flush()


def _exit_code(record: p.TerminalRecord) -> int:
    if record.failure is not None or record.exit_code is None:
        return EXIT_CLIENT_FAILURE
    return record.exit_code


def _report(record: p.TerminalRecord) -> None:
    """One-line notices on stderr for what the exit code alone does not say."""
    if record.sandbox_denied:
        first = record.denials[0] if record.denials else None
        what = f"{first.blocker} {first.target}" if first else "an action was blocked"
        more = f" (+{len(record.denials) - 1} more)" if len(record.denials) > 1 else ""
        _note(f"sandbox denied: {what}{more}")
    if record.output_lost:
        counts = (
            f"{record.stdout_lost_bytes} bytes of stdout, {record.stderr_lost_bytes} bytes of stderr"
            if record.stdout_lost_bytes is not None and record.stderr_lost_bytes is not None
            else "an unknown amount"
        )
        _note(f"output lost: {counts} were evicted on the server before they could be read")
    if record.timed_out:
        _note("timed out: the command's process tree was killed")
    if record.failure is not None:
        exited = f" (the command exited with {record.exit_code})" if record.exit_code is not None else ""
        _note(f"failure: {record.failure}{exited}")


async def _forward_signals(handle: ProcessHandle) -> None:
    """Ctrl-C interrupts the remote command (not us); SIGTERM/SIGHUP terminate/hang it up."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as received:
        async for signum in received:
            try:
                if signum == signal.SIGINT:
                    await handle.signal(p.SignalName.INTERRUPT)
                elif signum == signal.SIGTERM:
                    await handle.terminate()
                else:
                    await handle.signal(p.SignalName.HANGUP)
            except ExecClientError:
                pass


async def _forward_stdin(handle: ProcessHandle) -> None:
    """Copy our stdin to the command's, then close it (EOF)."""
    fd = sys.stdin.fileno()
    try:
        while True:
            # A thread, not a non-blocking fd: our stdin may be shared with the shell.
            data = await trio.to_thread.run_sync(os.read, fd, _STDIN_READ_BYTES, abandon_on_cancel=True)
            if not data:
                break
            if await handle.write(data) is not p.WriteStatus.ACCEPTED:
                return  # the command closed its stdin or exited; stop reading ours
        await handle.close_stdin()
    except (OSError, ExecClientError):
        pass  # the record tells what happened to the command


async def _stream(handle: ProcessHandle) -> None:
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    try:
        async for chunk in handle:
            target = out if chunk.stream is p.Stream.STDOUT else err
            # A blocking write is deliberate: if our stdout is slow, the whole client
            # pauses and TCP pushes back on the server, which repairs any drop by a read.
            target.write(chunk.chunk)
            target.flush()
    except OutputOverrun as exc:
        _note(str(exc))


async def _run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _UsageError("no command given (usage: exec-client run [options] -- CMD [ARGS...])")
    url = args.url or os.environ.get("EXEC_SERVER_URL") or DEFAULT_URL
    token = _resolve_token(args.token_file)
    cwd = os.path.abspath(args.cwd) if args.cwd else None
    env = _env(args.env)
    sandbox = _sandbox(args)
    async with open_client(url, token=token, client_name="exec-client-cli") as client:
        return await _run_command(client, args, command, cwd=cwd, env=env, sandbox=sandbox)


async def _run_command(
    client: Client,
    args: argparse.Namespace,
    command: list[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    sandbox: p.SandboxPolicy | None,
) -> int:
    handle = await client.start(
        command,
        cwd=cwd,
        env=env,
        timeout=args.timeout,
        sandbox=sandbox,
        stream_output=not args.json,
        pipe_stdin=args.stdin,
        # Streaming mode prints every byte as it arrives; the record need not keep them.
        max_output_bytes=p.DEFAULT_MAX_OUTPUT_BYTES if args.json else 0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_forward_signals, handle)
        if args.stdin:
            nursery.start_soon(_forward_stdin, handle)
        if not args.json:
            await _stream(handle)
        record = await handle.wait()
        nursery.cancel_scope.cancel()
    if args.json:
        sys.stdout.write(json.dumps(record_json(record), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    _report(record)
    return _exit_code(record)


def _spawn_exit(exc: SpawnFailed, command: list[str]) -> int:
    what = exc.strerror or exc.message
    _note(f"cannot start {command[0]!r}: {what}")
    if exc.errno == errno.ENOENT:
        return EXIT_NOT_FOUND
    if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM):
        return EXIT_NOT_EXECUTABLE
    return EXIT_CLIENT_FAILURE


def run_cli(argv: list[str]) -> int:
    """Run the CLI with ``argv`` (without the program name); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return trio.run(_run, args)
    except _UsageError as exc:
        _note(str(exc))
        return EXIT_USAGE
    except ValueError as exc:  # invalid arguments caught by the message validators
        _note(f"invalid arguments: {exc}")
        return EXIT_USAGE
    except SpawnFailed as exc:
        return _spawn_exit(exc, [c for c in args.command if c != "--"][:1] or ["?"])
    except (ConnectionFailed, ConnectionLost) as exc:
        _note(str(exc))
        return EXIT_CLIENT_FAILURE
    except ServerError as exc:
        _note(f"server error: {exc}")
        return EXIT_CLIENT_FAILURE
    except ExecClientError as exc:
        _note(str(exc))
        return EXIT_CLIENT_FAILURE
    except KeyboardInterrupt:
        _note("interrupted")
        return 128 + signal.SIGINT


def main() -> NoReturn:
    """Console-script entry point."""
    sys.exit(run_cli(sys.argv[1:]))
