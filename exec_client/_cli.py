"""``exec-client``: run one command through an exec server, like ``ssh host cmd``.

``exec-client run [options] -- CMD ARGS…`` streams the command's stdout/stderr to ours as
chunks arrive, forwards our stdin when it is not a terminal (``-n``: never), and exits
with the command's exit code (a signal's ``128+N`` is what ``exitCode`` already holds).
``--json`` prints exactly one record, a failure to start included. ``ps`` and ``kill``
act on the processes of a session (``--session``, e.g. the ``sessionId`` of a ``--json``
record). ``cp LOCAL :REMOTE`` / ``cp :REMOTE LOCAL`` copies one file (exit 1 as cp(1) when
the copy fails). Exit statuses: 255 connection/auth failure or a record with ``failure``; 127/126
program missing / not executable; 125 the working directory is missing; 141 our stdout
closed (``| head``); 2 usage errors.

``run -t`` gives the command a remote pseudo-terminal, ours in raw mode, like ``ssh -t``;
``shell`` is the server user's login shell that way (see ``_run_tty``).

Imports are deferred to the code that needs them: a build tool calls this once per
command, and interpreter start-up is most of its cost.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable

    import protocol as p

    from ._client import Client
    from ._errors import SpawnFailed
    from ._handle import ProcessHandle

DEFAULT_URL: Final = "ws://127.0.0.1:8765"
DEFAULT_TOKEN_FILE: Final = "~/.config/exec-server/token"
EXIT_CLIENT_FAILURE: Final = 255
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126
EXIT_BAD_CWD: Final = 125
SIGPIPE_NUMBER: Final = 13
EXIT_BROKEN_PIPE: Final = 128 + SIGPIPE_NUMBER
SIGINT_NUMBER: Final = 2
_PROG: Final = "exec-client"
_STDIN_READ_BYTES: Final = 256 * 1024
# Chunks read ahead of the command's stdin; when full, the reader thread waits.
_STDIN_QUEUE_CHUNKS: Final = 4
# A reader of our stdout went away: the remote command gets this long to end after SIGTERM.
_BROKEN_PIPE_GRACE: Final = 0.5


class _UsageError(Exception):
    pass


class _BrokenPipe(Exception):
    pass


class _Stdio:
    """Where one command's stdin comes from and its output goes.

    Ours (``ours``), or, in the control master (``_control.py``), a caller's descriptors
    (``of_caller``): those are written through a worker thread, so that a caller whose reader
    is slow holds up its own command only, and closed when its call ends.
    """

    def __init__(self, stdin_fd: int | None, out: IO[bytes], err_bytes: IO[bytes], err: IO[str], *, callers: bool) -> None:
        self.stdin_fd = stdin_fd
        self.out = out
        self.err_bytes = err_bytes
        self.err = err
        self._callers = callers

    @classmethod
    def ours(cls) -> _Stdio:
        try:
            stdin_fd: int | None = sys.stdin.fileno()
            os.fstat(stdin_fd)  # type: ignore[arg-type]
        except (AttributeError, OSError, ValueError):
            stdin_fd = None  # a daemon may run us with fd 0 closed
        return cls(stdin_fd, sys.stdout.buffer, sys.stderr.buffer, sys.stderr, callers=False)

    @classmethod
    def of_caller(cls, fds: list[int]) -> _Stdio:
        import io

        stdin_fd, out_fd, err_fd = fds
        for fd in fds:
            os.set_inheritable(fd, False)
        err_bytes = open(err_fd, "wb", buffering=0)
        err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", line_buffering=True)
        return cls(stdin_fd, open(out_fd, "wb"), err_bytes, err, callers=True)

    async def write(self, target: IO[bytes], data: bytes) -> None:
        """Write and flush ``data`` (BrokenPipeError when its reader is gone)."""
        if self._callers:
            import anyio.to_thread

            await anyio.to_thread.run_sync(_write_flush, target, data)
        else:
            # A blocking write is deliberate: if our stdout is slow, the whole client
            # pauses and TCP pushes back on the server, which repairs any drop by a read.
            _write_flush(target, data)

    def silence_stdout(self) -> None:
        """After EPIPE: point fd 1 at /dev/null so the interpreter's final flush stays quiet."""
        if self._callers:
            _close_quietly(self.out)
            self.out = open(os.devnull, "wb")
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

    def close(self) -> None:
        """A caller's descriptors are closed (ours stay)."""
        if self._callers:
            for stream in (self.out, self.err):
                _close_quietly(stream)
            if self.stdin_fd is not None:
                os.close(self.stdin_fd)


def _write_flush(target: IO[bytes], data: bytes) -> None:
    target.write(data)
    target.flush()


def _close_quietly(stream: IO[Any]) -> None:
    try:
        stream.close()
    except OSError:
        pass


# The control master sets this for each caller's call; everywhere else it is our own stdio.
_CALLER_STDIO: contextvars.ContextVar[_Stdio | None] = contextvars.ContextVar("exec_client_caller_stdio", default=None)


def _stdio() -> _Stdio:
    return _CALLER_STDIO.get() or _Stdio.ours()


def _version() -> str:
    from . import __version__

    return __version__


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"server: ws://HOST:PORT, wss://HOST:PORT, unix:/PATH or ssh://[USER@]HOST[:PORT] "
        f"(env EXEC_SERVER_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"file holding the token (env EXEC_SERVER_TOKEN / EXEC_SERVER_TOKEN_FILE; default {DEFAULT_TOKEN_FILE})",
    )
    parser.add_argument(
        "--no-token", action="store_true", help="send no token (a server without authentication, e.g. codex exec-server)"
    )
    parser.add_argument("--ca-file", metavar="PATH", help="trust only this CA bundle for wss:// (default: system CAs)")
    parser.add_argument("--no-resume", action="store_true", help="do not resume the session after a connection loss")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description="Run commands through an exec server.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {_version()}")
    commands = parser.add_subparsers(dest="subcommand", required=True)
    run = commands.add_parser(
        "run",
        help="run one command and exit with its exit code",
        usage=f"{_PROG} run [options] -- CMD [ARGS...]",
        epilog="exit status: the command's exit code (128+N if killed by signal N); 127/126 if the "
        "program is missing/not executable; 125 if the working directory is missing; 141 if our "
        "stdout was closed; 255 if the server cannot be reached, refuses the token, or the record "
        "could not be completed; 2 for usage errors",
    )
    _add_connection_options(run)
    run.add_argument("--json", action="store_true", help="print only the terminal record as JSON (always one)")
    run.add_argument("--binary", action="store_true", help="with --json: stdout/stderr as base64 (binary-safe)")
    run.add_argument("--timeout", type=float, metavar="S", help="kill the command's tree after S seconds")
    run.add_argument("--cwd", metavar="DIR", help="working directory on the server host (relative: to the server's)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set an environment variable")
    run.add_argument("--sandbox", choices=["none", "readOnly", "workspaceWrite"], help="sandbox mode (default: the server's)")
    run.add_argument("--network", action="store_true", help="allow network access inside the sandbox (alone: readOnly + network)")
    stdin = run.add_mutually_exclusive_group()
    stdin.add_argument("-n", "--no-stdin", action="store_true", help="never forward our stdin (the command reads EOF)")
    stdin.add_argument(
        "--stdin",
        action="store_true",
        help="forward our stdin even when it is a terminal, or to codex exec-server (which cannot close it)",
    )
    run.add_argument(
        "--control-persist",
        type=float,
        metavar="S",
        help="share one background connection with the calls of the next S seconds, like ssh's "
        f"ControlPersist (env EXEC_CLIENT_CONTROL_PERSIST; default 60; 0: off)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    _add_tty_option(run)
    _add_shell_parser(commands)
    ps = commands.add_parser("ps", help="list the processes of a session (takes the session over)")
    _add_connection_options(ps)
    ps.add_argument("--session", required=True, metavar="ID", help="the session (a --json record's sessionId)")
    kill = commands.add_parser("kill", help="terminate a process of a session (takes the session over)")
    _add_connection_options(kill)
    kill.add_argument("--session", required=True, metavar="ID", help="the session (a --json record's sessionId)")
    kill.add_argument("--signal", default="terminate", choices=["terminate", "kill", "interrupt", "hangup"])
    kill.add_argument("process_id", metavar="PROCESS_ID")
    _add_cp_parser(commands)
    control = commands.add_parser(
        "control", help="the control master of these connection options (see run --control-persist)"
    )
    _add_connection_options(control)
    control.add_argument("action", choices=["stop"], help="stop: finish its calls and end")
    return parser


def _resolve_token(token_file: str | None) -> str:
    if token_file is None:
        token = os.environ.get("EXEC_SERVER_TOKEN")
        if token:
            return token.strip()
        token_file = os.environ.get("EXEC_SERVER_TOKEN_FILE") or DEFAULT_TOKEN_FILE
    path = os.path.expanduser(token_file)
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except OSError as exc:
        from ._errors import ConnectionFailed

        raise ConnectionFailed(
            f"cannot read the token file {path}: {exc.strerror or exc} (set EXEC_SERVER_TOKEN or --token-file)"
        ) from None
    if not token:
        from ._errors import ConnectionFailed

        raise ConnectionFailed(f"the token file {path} is empty")
    return token


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("EXEC_SERVER_URL") or DEFAULT_URL)


def _needs_token(url: str) -> bool:
    return not url.startswith("ssh://")


def _sandbox(args: argparse.Namespace) -> p.SandboxPolicy | None:
    import protocol as p

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


def _output(data: bytes, binary: bool) -> str:
    if binary:
        import base64

        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", errors="replace")


def record_json(record: p.TerminalRecord, *, binary: bool = False, session_id: str | None = None) -> dict[str, Any]:
    """The record as JSON data: camelCase names, output as UTF-8 text (or base64 if ``binary``)."""
    import protocol as p

    data: dict[str, Any] = {
        "processId": record.process_id,
        "argv": list(record.argv),
        "exitCode": record.exit_code,
        "signal": record.signal,
        "timedOut": record.timed_out,
        "sandboxDenied": record.sandbox_denied,
        "denials": [{"blocker": d.blocker, "target": d.target} for d in record.denials],
        "sandboxDeniedSource": record.sandbox_denied_source,
        "limitExceeded": record.limit_exceeded,
        "stdout": _output(record.stdout, binary),
        "stderr": _output(record.stderr, binary),
        "outputEncoding": "base64" if binary else "utf-8",
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
    if session_id is not None:
        data["sessionId"] = session_id
    return data


def _failure_json(command: list[str], failure: str, *, binary: bool) -> dict[str, Any]:
    """The one ``--json`` record of a command that never ran."""
    return {
        "processId": None,
        "argv": command,
        "exitCode": None,
        "signal": None,
        "timedOut": False,
        "sandboxDenied": None,
        "denials": [],
        "sandboxDeniedSource": None,
        "stdout": "",
        "stderr": "",
        "outputEncoding": "base64" if binary else "utf-8",
        "stdoutOmittedBytes": 0,
        "stderrOmittedBytes": 0,
        "outputLost": False,
        "stdoutLostBytes": 0,
        "stderrLostBytes": 0,
        "durationMs": None,
        "usage": None,
        "completion": None,
        "readCalls": 0,
        "failure": failure,
    }


def _print_json(data: dict[str, Any]) -> None:
    import json

    _write_flush(_stdio().out, (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8"))


def _note(message: str) -> None:
    err = _stdio().err
    err.write(f"{_PROG}: {message}\n")
    err.flush()


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


async def _forward_signals(handle: ProcessHandle, signals: AsyncIterable[int] | None) -> None:
    """Ctrl-C interrupts the remote command (not us); SIGTERM/SIGHUP terminate/hang it up.

    ``signals``: the numbers a control master's caller forwards; None: the ones we receive.
    """
    import signal

    import anyio

    if signals is None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as received:
            await _forward_signals(handle, received)
        return

    from ._errors import ExecClientError

    async for signum in signals:
        try:
            if signum == signal.SIGINT:
                await handle.signal("interrupt")
            elif signum == signal.SIGTERM:
                await handle.terminate()
            elif signum == signal.SIGHUP:
                await handle.signal("hangup")
        except ExecClientError:
            pass


async def _forward_stdin(handle: ProcessHandle) -> None:
    """Copy our stdin to the command's, then close it (EOF).

    Read by a daemon thread, not a non-blocking fd (our stdin may be shared with the
    shell) nor a worker thread (the interpreter waits for those at exit, and a stdin that
    never ends — ``sleep 100 | exec-client run -- true`` — must not keep us alive). The
    thread waits for input with ``poll`` next to a stop pipe, so it ends, and reads no
    more, as soon as the command no longer wants input: in the control master the
    descriptor is a caller's, closed when its call ends.
    """
    import select
    import threading

    import anyio
    import anyio.from_thread
    import anyio.lowlevel
    import anyio.to_thread

    import protocol as p

    from ._errors import ExecClientError, NotSupported

    stdin_fd = _stdio().stdin_fd
    assert stdin_fd is not None  # forwarded only when usable
    send, receive = anyio.create_memory_object_stream[bytes](_STDIN_QUEUE_CHUNKS)
    token = anyio.lowlevel.current_token()
    stop_read, stop_write = os.pipe()

    def reader() -> None:
        poller = select.poll()
        poller.register(stdin_fd, select.POLLIN)
        poller.register(stop_read, select.POLLIN)
        try:
            while stop_read not in dict(poller.poll()) and (data := os.read(stdin_fd, _STDIN_READ_BYTES)):
                anyio.from_thread.run(send.send, data, token=token)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.RunFinishedError):
            pass
        finally:
            try:
                anyio.from_thread.run_sync(send.close, token=token)
            except anyio.RunFinishedError:
                pass

    thread = threading.Thread(target=reader, name="exec-client stdin", daemon=True)
    thread.start()
    try:
        async with receive:
            async for data in receive:
                if await handle.write(data) is not p.WriteStatus.ACCEPTED:
                    return  # the command closed its stdin or exited; stop reading ours
        await handle.close_stdin()
    except NotSupported as exc:
        _note(f"our stdin ended, but {exc}: the command's stays open")
    except ExecClientError:
        pass  # the record tells what happened to the command
    finally:
        os.write(stop_write, b"x")
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join)
        os.close(stop_read)
        os.close(stop_write)


async def _stream(handle: ProcessHandle) -> None:
    """Our stdout/stderr get every chunk as it arrives.

    Raises:
        _BrokenPipe: our stdout's reader went away (``| head``).
    """
    import protocol as p

    from ._errors import OutputOverrun

    std = _stdio()
    try:
        async for chunk in handle:
            target = std.out if chunk.stream is p.Stream.STDOUT else std.err_bytes
            try:
                await std.write(target, chunk.chunk)
            except BrokenPipeError:
                raise _BrokenPipe from None
    except OutputOverrun as exc:
        _note(str(exc))


def _stdin_usable() -> bool:
    """Whether we have a stdin at all (a daemon may run us with fd 0 closed)."""
    return _stdio().stdin_fd is not None


async def _stream_until_broken_pipe(handle: ProcessHandle, stream: Callable[[ProcessHandle], Awaitable[None]]) -> bool:
    """Write the command's output with ``stream``; True if our stdout closed first (``| head``):
    it is silenced and the command terminated, as a local pipeline's writer would be."""
    try:
        await stream(handle)
    except _BrokenPipe:
        _stdio().silence_stdout()
        await handle.terminate(grace=_BROKEN_PIPE_GRACE)
        return True
    return False


def _open(args: argparse.Namespace, url: str, **kwargs: Any) -> Any:
    from ._client import open_client

    token = _resolve_token(args.token_file) if _needs_token(url) and not args.no_token else None
    return open_client(
        url,
        token=token,
        ca_file=args.ca_file,
        resume=not args.no_resume,
        on_resume=_note,
        client_name="exec-client-cli",
        **kwargs,
    )


async def _run(args: argparse.Namespace, command: list[str], master: _MasterAddress | None) -> int:
    url = _url(args)
    async with _open(args, url) as client:
        if master is not None:
            _start_master(args, master)  # the server answers: later calls can share a connection
        return await _run_command(client, args, command)


# --- the control master (``_control.py``): later calls share one warm client ----------------


# The control master's address (a ``_control.ControlAddress``), the token, how long it persists.
_MasterAddress = tuple[Any, str | None, float]


def _control_address(args: argparse.Namespace) -> tuple[Any, str | None] | None:
    """The control master's address for our connection options, and the token; None where
    no master can be used (``ControlAddress.for_options``)."""
    from . import _control

    url = _url(args)
    token = _resolve_token(args.token_file) if _needs_token(url) and not args.no_token else None
    address = _control.ControlAddress.for_options(url, token, args.ca_file, not args.no_resume)
    return None if address is None else (address, token)


def _master_address(args: argparse.Namespace) -> _MasterAddress | None:
    """``_control_address`` and how long a master persists; None if masters are off
    (``--control-persist 0``) or unusable here."""
    from . import _control

    persist = _control.persist_seconds(args.control_persist)
    found = _control_address(args) if persist > 0 else None
    return None if found is None else (*found, persist)


def _through_master(args: argparse.Namespace, master: _MasterAddress) -> int | None:
    """Run through the control master at ``master`` if one serves there: its exit status, else None."""
    from . import _control

    return _control.call_master(master[0], {"argv": args.argv})


def _start_master(args: argparse.Namespace, master: _MasterAddress) -> None:
    from . import _control

    address, token, persist = master
    ca_file = os.path.abspath(args.ca_file) if args.ca_file else None
    _control.start_master(address, {"url": _url(args), "ca_file": ca_file, "resume": not args.no_resume, "persist": persist}, token)


def client_usable(client: Client) -> bool:
    """Whether a control master's client takes a new call: connected (while it resumes its
    session, or after it lost it, a caller runs on its own rather than wait)."""
    from ._client import ClientState

    return client.state is ClientState.CONNECTED


async def run_for_caller(client: Client, request: dict[str, Any], fds: list[int], signals: AsyncIterable[int]) -> int:
    """One caller's ``exec-client run`` in the control master: its argv parsed as ours, its
    stdin/stdout/stderr (``fds``, closed here), its forwarded signals; the exit status."""
    std = _Stdio.of_caller(fds)
    reset = _CALLER_STDIO.set(std)
    try:
        argv = request.get("argv")
        if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
            return EXIT_USAGE
        try:
            args = _parser().parse_args(argv)
        except SystemExit:
            return EXIT_USAGE
        command = [c for c in args.command if c != "--"]
        try:
            return await _run_command(client, args, _command_of(args), signals)
        except Exception as exc:
            try:
                return _exit_for(exc, args, command, json_mode=args.json)
            except Exception as unexpected:
                _note(f"internal error in the control master: {unexpected!r}")
                return EXIT_CLIENT_FAILURE
    finally:
        _CALLER_STDIO.reset(reset)
        std.close()


def _control(args: argparse.Namespace) -> int:
    """``control stop``: the master for these connection options finishes its calls and ends."""
    from . import _control

    found = _control_address(args)
    if found is None or not _control.stop_master(found[0]):
        _note(f"no control master for {_url(args)}")
        return 1
    return 0


async def _run_command(
    client: Client, args: argparse.Namespace, command: list[str], signals: AsyncIterable[int] | None = None
) -> int:
    import anyio

    import protocol as p

    # Codex's dialect cannot close a command's stdin: forwarding ours by default would leave
    # `cat` waiting forever after our EOF, so there it takes --stdin.
    closable = client.info.dialect != "codex"
    forward_stdin = (
        not args.no_stdin and _stdin_usable() and (args.stdin or (closable and not os.isatty(_stdio().stdin_fd)))  # type: ignore[arg-type]
    )
    handle = await client.start(
        command,
        cwd=args.cwd,  # sent as given: a relative one is resolved on the server
        env=_env(args.env),
        timeout=args.timeout,
        sandbox=_sandbox(args),
        stream_output=not args.json,
        pipe_stdin=forward_stdin,
        # Streaming mode prints every byte as it arrives; the record need not keep them.
        max_output_bytes=p.DEFAULT_MAX_OUTPUT_BYTES if args.json else 0,
    )
    broken_pipe = False
    async with anyio.create_task_group() as group:
        group.start_soon(_forward_signals, handle, signals)
        if forward_stdin:
            group.start_soon(_forward_stdin, handle)
        if not args.json:
            broken_pipe = await _stream_until_broken_pipe(handle, _stream)
        record = await handle.wait()
        group.cancel_scope.cancel()
    if broken_pipe:
        return EXIT_BROKEN_PIPE
    if args.json:
        _print_json(record_json(record, binary=args.binary, session_id=client.session_id))
    _report(record)
    return _exit_code(record)


# --- run -t and shell: a remote pseudo-terminal, like ssh -t ---------------------------------

# SIGTERM/SIGHUP to the CLI in tty mode: the remote command gets the signal, and this long
# to end (and its record to arrive) before we leave without it, restoring the terminal.
_TTY_SIGNAL_EXIT_SECONDS: Final = 3.0
# `exec-client shell`: the server user's login shell, from the passwd database (getent,
# so NSS users count too), else $SHELL, else /bin/sh, started as a login shell (-l) in
# the user's home directory unless --cwd says where (as ssh does).
_LOGIN_SHELL_SCRIPT: Final = (
    'entry=$(getent passwd "$(id -u)" 2>/dev/null); '
    'shell=$(printf %s "$entry" | cut -d: -f7); home=$(printf %s "$entry" | cut -d: -f6); '
    '[ -x "$shell" ] || shell=${SHELL:-/bin/sh}; [ -x "$shell" ] || shell=/bin/sh; '
)
_LOGIN_SHELL_CD: Final = 'cd "${home:-${HOME:-/}}" 2>/dev/null; '
_LOGIN_SHELL_EXEC: Final = 'exec "$shell" -l'


def _add_tty_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t",
        "--tty",
        action="count",
        default=0,
        help="run it on a remote pseudo-terminal, our terminal in raw mode (like ssh -t); "
        "needs a terminal on stdin unless given twice (-tt)",
    )


def _add_shell_parser(commands: Any) -> None:
    shell = commands.add_parser(
        "shell",
        help="the server user's login shell (a remote terminal when stdin is one, like ssh HOST)",
        description="Start the server user's login shell (getent passwd, else $SHELL, else /bin/sh; "
        "with -l, in the home directory unless --cwd). With a terminal on stdin it runs on a remote "
        "pseudo-terminal (as run -t); otherwise it reads commands from stdin, like ssh HOST.",
    )
    _add_connection_options(shell)
    shell.add_argument("--cwd", metavar="DIR", help="start in DIR on the server host (default: the user's home)")
    shell.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set an environment variable")
    shell.add_argument("--sandbox", choices=["none", "readOnly", "workspaceWrite"], help="sandbox mode (default: the server's)")
    shell.add_argument("--network", action="store_true", help="allow network access inside the sandbox")
    _add_tty_option(shell)
    shell.set_defaults(json=False, binary=False, timeout=None, no_stdin=False, stdin=False, command=["sh"])


def _login_shell_command(cwd: str | None) -> list[str]:
    script = _LOGIN_SHELL_SCRIPT + ("" if cwd is not None else _LOGIN_SHELL_CD) + _LOGIN_SHELL_EXEC
    return ["sh", "-c", script]


def _local_terminal() -> bool:
    stdin_fd = _stdio().stdin_fd
    return stdin_fd is not None and os.isatty(stdin_fd)


def _check_tty_request(args: argparse.Namespace) -> None:
    """``-t`` needs a terminal on our stdin (``-tt`` forces one remotely anyway); no ``--json``.

    ``shell`` without ``-t`` takes a remote terminal exactly when stdin is one.
    """
    if args.subcommand == "shell" and not args.tty:
        args.tty = 1 if _local_terminal() else 0
        return
    if args.json:
        raise _UsageError("-t does not combine with --json (a terminal's output is for a person)")
    if args.tty == 1 and not _local_terminal():
        raise _UsageError("-t needs a terminal on stdin (stdin is not a tty); -tt forces a remote terminal")


def _tty_env(pairs: list[str]) -> dict[str, str] | None:
    """``--env``, plus our ``TERM`` (as ssh sends it) unless given: the remote programs draw for it."""
    env = _env(pairs) or {}
    term = os.environ.get("TERM")
    if term and "TERM" not in env:
        env["TERM"] = term
    return env or None


async def _shell(args: argparse.Namespace) -> int:
    command = _login_shell_command(args.cwd)
    args.command = command
    async with _open(args, _url(args)) as client:
        if args.tty:
            return await _run_tty(client, args, command)
        return await _run_command(client, args, command)


async def _run_tty_command(args: argparse.Namespace, command: list[str]) -> int:
    async with _open(args, _url(args)) as client:
        return await _run_tty(client, args, command)


async def _run_tty(client: Client, args: argparse.Namespace, command: list[str]) -> int:
    """``run -t``: the command on a remote pty; our keyboard and screen are its terminal.

    Our terminal (stdin) goes into raw mode for as long as the command runs and is restored
    on every way out (``RawTerminal``); SIGINT/SIGTERM/SIGHUP are caught from before raw
    mode until after the restore, so none of them can leave it raw.
    """
    import signal

    import anyio

    from ._terminal import RawTerminal, window_size

    forward_stdin = not args.no_stdin and _stdin_usable()
    raw = forward_stdin and _local_terminal()
    # The size comes from our stdin's terminal (as ssh takes it), else our stdout's.
    size_fd = 0 if window_size(0) is not None else 1
    size = window_size(size_fd)
    handle = await client.start(
        command,
        cwd=args.cwd,
        env=_tty_env(args.env),
        timeout=args.timeout,
        sandbox=_sandbox(args),
        stream_output=True,
        max_output_bytes=0,  # every byte goes to our screen as it arrives
        tty=True,
        size=size,
    )
    signalled: list[int] = []
    broken_pipe = False
    record = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as received:
        terminal = RawTerminal(sys.stdin.fileno()) if raw else None
        try:
            if terminal is not None:
                try:
                    terminal.enter_raw()
                    _stderr_newline("\r\n")
                except OSError as exc:  # as ssh does: say so, and go on with the terminal as it is
                    _note(str(exc))
            async with anyio.create_task_group() as group:
                group.start_soon(_forward_tty_signals, handle, received, signalled, group.cancel_scope)
                if size is not None:
                    group.start_soon(_follow_window_size, handle, size_fd, size)
                if forward_stdin:
                    group.start_soon(_forward_stdin, handle)
                broken_pipe = await _stream_until_broken_pipe(handle, _stream_terminal)
                record = await handle.wait()
                group.cancel_scope.cancel()
        finally:
            if terminal is not None:
                _stderr_newline(None)
                terminal.restore()
    if broken_pipe:
        return EXIT_BROKEN_PIPE
    try:
        if record is None or record.failure is not None:
            # The command did not end by itself: our notes start a line of their own, not
            # after whatever the remote program left at the cursor (its prompt).
            _fresh_line()
        if record is None:  # SIGTERM/SIGHUP and the record did not come in time
            _note(f"{signal.Signals(signalled[0]).name}: left without the command's record")
        else:
            _report(record)
    except OSError:
        pass  # our terminal is gone (a hangup): there is nobody to tell
    return 128 + signalled[0] if record is None else _exit_code(record)


def _stderr_newline(newline: str | None) -> None:
    """Our own notes while the terminal is raw (a resume, say) end in "\\r\\n": raw mode
    turns off the output processing that would add the carriage return."""
    reconfigure = getattr(sys.stderr, "reconfigure", None)
    if reconfigure is not None:
        sys.stderr.flush()
        reconfigure(newline=newline)


def _fresh_line() -> None:
    try:
        if os.isatty(sys.stderr.fileno()):
            sys.stderr.write("\n")
    except (OSError, ValueError):
        pass


async def _forward_tty_signals(handle: ProcessHandle, received: Any, signalled: list[int], scope: Any) -> None:
    """In raw mode Ctrl-C is a byte; a SIGINT that still reaches us (``kill -INT``) interrupts
    the remote foreground group. SIGTERM terminates the command and SIGHUP hangs it up (our
    terminal is gone), then we leave within ``_TTY_SIGNAL_EXIT_SECONDS`` either way."""
    import signal

    import anyio

    from ._errors import ExecClientError

    async for signum in received:
        if signum == signal.SIGINT:
            try:
                await handle.signal("interrupt")
            except ExecClientError:
                pass
            continue
        signalled.append(signum)
        with anyio.move_on_after(_TTY_SIGNAL_EXIT_SECONDS):
            try:
                if signum == signal.SIGTERM:
                    await handle.terminate()
                else:
                    await handle.signal("hangup")
            except ExecClientError:
                pass
            await handle.wait()
            return  # the main flow has the record and ends the group
        scope.cancel()
        return


async def _follow_window_size(handle: ProcessHandle, fd: int, size: tuple[int, int]) -> None:
    """Every SIGWINCH: the new size goes to the remote pty (``process/resize``)."""
    from ._errors import ExecClientError
    from ._terminal import window_changes

    async for rows, cols in window_changes(fd, size):
        try:
            await handle.resize(rows, cols)
        except ExecClientError:
            pass  # the command may have ended; its record tells


async def _stream_terminal(handle: ProcessHandle) -> None:
    """The remote terminal's output goes to our stdout untouched (the remote pty already
    turned "\\n" into "\\r\\n"; our terminal is raw, so it adds nothing).

    Raises:
        _BrokenPipe: our stdout's reader went away, or our terminal did (EIO after a hangup).
    """
    from ._errors import OutputOverrun

    out = sys.stdout.buffer
    try:
        async for chunk in handle:
            try:
                out.write(chunk.chunk)
                out.flush()
            except OSError:  # EPIPE, or EIO from a terminal that is gone
                raise _BrokenPipe from None
    except OutputOverrun as exc:
        _note(str(exc))

async def _ps(args: argparse.Namespace) -> int:
    async with _open(args, _url(args), session_id=args.session) as client:
        listed = await client.list()
        await client.detach()  # the session stays (detached, for its TTL) rather than ending
    for entry in listed:
        sys.stdout.write(f"{entry.process_id}\t{entry.pid}\t{entry.state.value}\t{' '.join(entry.argv)}\n")
    sys.stdout.flush()
    return 0


async def _kill(args: argparse.Namespace) -> int:
    import protocol as p

    async with _open(args, _url(args), session_id=args.session) as client:
        if args.signal == "terminate":
            result: p.TerminateResult = await client.call(p.TerminateParams(process_id=args.process_id, grace_ms=2000))
            running = result.running
        else:
            signalled: p.SignalResult = await client.call(
                p.SignalParams(process_id=args.process_id, signal=p.SignalName(args.signal))
            )
            running = signalled.delivered
        await client.detach()
    if not running:
        _note(f"{args.process_id} was not running")
    return 0


# --- cp ---------------------------------------------------------------------------------

EXIT_CP_FAILED: Final = 1  # as cp(1): the copy failed (a missing source, a refused write...)
_REMOTE_PREFIX: Final = ":"


def _add_cp_parser(commands: Any) -> None:
    cp = commands.add_parser(
        "cp",
        help="copy a file to or from the server (:PATH is remote, as in scp)",
        usage=f"{_PROG} cp [-r] [options] LOCAL :REMOTE | :REMOTE LOCAL",
        description="Copy one file between here and the server. The side written with a leading ':' is "
        "remote (an absolute path on the server); a local name that starts with ':' is written ./:NAME. "
        "A destination that is a directory receives the file under its own name. The file operation runs "
        "in a sandbox on the server: by default the server's default policy (readOnly unless the operator "
        "chose otherwise, so an upload is refused with 'Read-only file system'); --sandbox workspaceWrite "
        "makes only the destination's directory writable (with -r: each directory it creates or fills).",
        epilog="exit status: 0 copied; 1 the copy failed (missing source, a directory, a refused write); "
        "2 usage errors; 255 the server cannot be reached or refuses the token",
    )
    _add_connection_options(cp)
    cp.add_argument("-r", "--recursive", action="store_true", help="copy a directory and what it holds (symlinks followed, as scp -r)")
    cp.add_argument("--sandbox", choices=["none", "readOnly", "workspaceWrite"], help="sandbox of the file operation (default: the server's)")
    cp.add_argument("source", metavar="SOURCE")
    cp.add_argument("destination", metavar="DEST")


def _cp_note(message: str) -> int:
    _note(f"cp: {message}")
    return EXIT_CP_FAILED


def _local_error(exc: OSError) -> str:
    return exc.strerror or str(exc)


async def _cp(args: argparse.Namespace) -> int:
    """``cp LOCAL :REMOTE`` uploads, ``cp :REMOTE LOCAL`` downloads; errors as cp(1) prints them."""
    import stat

    from ._errors import RemoteFileError, RemoteFileNotFound

    source, destination = args.source, args.destination
    upload = destination.startswith(_REMOTE_PREFIX)
    if upload == source.startswith(_REMOTE_PREFIX):
        raise _UsageError("cp: exactly one of SOURCE and DEST must be remote (:PATH), e.g. cp build.tar :/srv/build.tar")
    remote = (destination if upload else source)[len(_REMOTE_PREFIX) :]
    local = source if upload else destination
    if not remote.startswith("/"):
        raise _UsageError(f"cp: the remote path must be absolute: {_REMOTE_PREFIX}{remote}")
    if upload:
        try:
            info = os.stat(local)
        except OSError as exc:
            return _cp_note(f"cannot stat {local!r}: {_local_error(exc)}")
        if stat.S_ISDIR(info.st_mode) and not args.recursive:
            return _cp_note(f"-r not specified; omitting directory {local!r}")
    sandbox = args.sandbox
    async with _open(args, _url(args)) as client:
        if upload:
            target = remote
            try:
                if remote.endswith("/") or (await client.stat(remote)).is_dir:
                    target = os.path.join(remote, os.path.basename(os.path.normpath(local)))
            except RemoteFileNotFound:
                pass  # a new file (or directory)
            try:
                await client.upload(local, target, recursive=args.recursive, sandbox=sandbox)
            except RemoteFileError as exc:
                what = "" if args.recursive else "regular file "
                return _cp_note(f"cannot create {what}'{_REMOTE_PREFIX}{exc.filename}': {exc.strerror}")
            except OSError as exc:
                return _cp_note(f"cannot read {(exc.filename or local)!r}: {_local_error(exc)}")
            return 0
        try:
            remote_stat = await client.stat(remote, sandbox=sandbox)
        except RemoteFileError as exc:
            return _cp_note(f"cannot stat '{_REMOTE_PREFIX}{remote}': {exc.strerror}")
        if remote_stat.is_dir and not args.recursive:
            return _cp_note(f"-r not specified; omitting directory '{_REMOTE_PREFIX}{remote}'")
        name = os.path.basename(os.path.normpath(remote))
        target = os.path.join(local, name) if os.path.isdir(local) else local
        try:
            await client.download(remote, target, recursive=args.recursive, sandbox=sandbox)
        except RemoteFileError as exc:
            return _cp_note(f"cannot read '{_REMOTE_PREFIX}{exc.filename}': {exc.strerror}")
        except OSError as exc:
            return _cp_note(f"cannot create {(exc.filename or target)!r}: {_local_error(exc)}")
        return 0


def _spawn_exit(exc: SpawnFailed, command: list[str], cwd: str | None) -> tuple[int, str]:
    import errno

    what = exc.strerror or exc.message
    if cwd is not None and "cwd" in exc.message:
        return EXIT_BAD_CWD, f"cannot start {command[0]!r}: the working directory {cwd!r} on the server: {what}"
    message = f"cannot start {command[0]!r}: {what}"
    if exc.errno == errno.ENOENT:
        return EXIT_NOT_FOUND, message
    if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM):
        return EXIT_NOT_EXECUTABLE, message
    return EXIT_CLIENT_FAILURE, message


def _command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _UsageError("no command given (usage: exec-client run [options] -- CMD [ARGS...])")
    return command


def _dispatch(args: argparse.Namespace) -> int:
    master = None
    if args.subcommand == "run" and not args.tty:
        _command_of(args)  # a usage error is ours to say, not a master's
        master = _master_address(args)
        code = None if master is None else _through_master(args, master)
        if code is not None:
            return code
    if args.subcommand == "control":
        return _control(args)

    import anyio

    if args.subcommand == "shell":
        _check_tty_request(args)
        return anyio.run(_shell, args)
    if args.subcommand == "run" and args.tty:
        _check_tty_request(args)
        return anyio.run(_run_tty_command, args, _command_of(args))
    if args.subcommand == "ps":
        return anyio.run(_ps, args)
    if args.subcommand == "kill":
        return anyio.run(_kill, args)
    if args.subcommand == "cp":
        return anyio.run(_cp, args)
    return anyio.run(_run, args, _command_of(args), master)


def run_cli(argv: list[str]) -> int:
    """Run the CLI with ``argv`` (without the program name); return the exit status."""
    args = _parser().parse_args(argv)
    args.argv = argv  # what a control master parses again
    json_mode = args.subcommand == "run" and args.json
    command = [c for c in getattr(args, "command", []) if c != "--"]
    try:
        return _run_guarded(args, command, json_mode)
    except KeyboardInterrupt:
        _note("interrupted")
        return 128 + SIGINT_NUMBER


def _run_guarded(args: argparse.Namespace, command: list[str], json_mode: bool) -> int:
    try:
        return _dispatch(args)
    except Exception as exc:
        return _exit_for(exc, args, command, json_mode=json_mode)


def _exit_for(exc: Exception, args: argparse.Namespace, command: list[str], *, json_mode: bool) -> int:
    """The exit status for ``exc``, after its one-line note (and with ``--json`` the one
    record); re-raises what is not an error of the kinds we report."""

    def fail(code: int, message: str) -> int:
        if json_mode:
            _print_json(_failure_json(command, message, binary=args.binary))
        _note(message)
        return code

    from ._errors import ExecClientError, ServerError, SpawnFailed

    if isinstance(exc, _UsageError):
        _note(str(exc))
        return EXIT_USAGE
    if isinstance(exc, (ValueError, TypeError)):  # invalid arguments caught by the message validators
        _note(f"invalid arguments: {exc}")
        return EXIT_USAGE
    if isinstance(exc, SpawnFailed):
        return fail(*_spawn_exit(exc, command or ["?"], getattr(args, "cwd", None)))
    if isinstance(exc, ServerError):
        return fail(EXIT_CLIENT_FAILURE, f"server error: {exc}")
    if isinstance(exc, ExecClientError):
        return fail(EXIT_CLIENT_FAILURE, str(exc))
    raise exc


def main() -> NoReturn:
    """Console-script entry point."""
    sys.exit(run_cli(sys.argv[1:]))
