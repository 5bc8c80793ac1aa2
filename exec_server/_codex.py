"""Serving a Codex CLI client: its dialect mapped onto our sessions, sandbox and file operations.

A connection whose ``initialize`` has no ``protocolVersion`` is a Codex client
(``protocol/_codex.py``); ``Connection`` then hands every request to ``CodexDialect``. The
session, processes, retention and sandbox are the same objects our own clients use; only
the shapes differ (see docs/protocol.md, "The Codex dialect", for the table).

What the mapping guarantees:

- **Never wider.** Codex's permissions profile becomes our ``SandboxPolicy`` only when the
  policy grants no more than the profile; whatever cannot be expressed exactly is refused
  (-32603 with the reason), never relaxed. ``sandbox: null`` runs under the server's default
  policy, like our own requests without a sandbox.
- **Network fails closed.** ``enforceManagedNetwork`` (a proxy with domain rules) is beyond
  this server, so such commands get no network at all.
- **Lossless delivery.** Codex's client cannot repair a gap in the event stream, so its
  connections are lossless: output waits for room rather than being dropped.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from collections.abc import Awaitable, Callable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

import protocol as p
from protocol import _codex as c
from protocol import ErrorCode, ProtocolError, SandboxMode
from protocol._codex import (
    decode as decode,
    decode_fs_request as decode_fs_request,
    encode_error as encode_error,
    encode_result as encode_result,
    is_codex_initialize as is_codex_initialize,
)

from . import _spawn, _tree
from ._auth import TOKEN_ENV
from ._codex_sandbox import policy_for
from ._fs import FileOperations
from ._config import SERVER_VERSION

if TYPE_CHECKING:
    from ._fs import FileHost
    from ._session import Session

log = logging.getLogger(__name__)

# Codex's client knows these; ours says "landlock", which it refuses.
SANDBOX_TYPE_OF: Final[dict[str, str]] = {"landlock": "linuxSeccomp", "none": "none"}
# envPolicy.inherit = "core": what Codex keeps (its ShellEnvironmentPolicy's core set).
CORE_ENV_VARS: Final = ("HOME", "LOGNAME", "PATH", "SHELL", "USER", "USERNAME", "TMPDIR", "TEMP", "TMP")
# Dropped unless ignoreDefaultExcludes: names that usually carry secrets (case-insensitive).
DEFAULT_ENV_EXCLUDES: Final = ("*KEY*", "*SECRET*", "*TOKEN*")
SLASH_TMP: Final = "/tmp"

Enqueue = Callable[[str], Awaitable[None]]
# The connection's bounded read answer: (params, encode the result) -> queued.
AnswerRead = Callable[["p.ReadParams", Callable[["p.ReadResult"], str]], Awaitable[None]]


def _invalid(exc: p.FieldError | ValueError, field: str) -> ProtocolError:
    name = p.wire_name(exc.field) if isinstance(exc, p.FieldError) else field
    return ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params: {exc} @ $.params.{name}")


def path_of(uri: str, field: str = "path") -> str:
    """A request's ``file://`` URI as a path, or -32602."""
    try:
        return c.path_from_uri(uri, field)
    except p.FieldError as exc:
        raise _invalid(exc, field) from None


# --- the environment ---------------------------------------------------------------------


def inherited_environment() -> dict[str, str]:
    """What a command may inherit from the server: exactly what our ``inheritEnv`` gives
    (``_spawn.build_env`` decides what is withheld), never the server's token."""
    env = _spawn.build_env(None, True, "", _tree.TREE_MARKER_VAR)
    env.pop(_tree.TREE_MARKER_VAR, None)
    env.pop(TOKEN_ENV, None)
    return env


def environment_for(policy: c.EnvPolicy | None, env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """The command's environment as Codex's server builds it: ``envPolicy`` over ``base``
    (the server's own environment), then ``env`` on top. No ``envPolicy``: ``env`` alone."""
    if policy is None:
        return dict(env)
    if policy.inherit is c.EnvInherit.ALL:
        result = dict(base)
    elif policy.inherit is c.EnvInherit.CORE:
        result = {name: base[name] for name in CORE_ENV_VARS if name in base}
    else:
        result = {}

    def matches(name: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(name.upper(), pattern.upper()) for pattern in patterns)

    if not policy.ignore_default_excludes:
        result = {k: v for k, v in result.items() if not matches(k, DEFAULT_ENV_EXCLUDES)}
    result = {k: v for k, v in result.items() if not matches(k, policy.exclude)}
    result.update(policy.set)
    if policy.include_only:
        result = {k: v for k, v in result.items() if matches(k, policy.include_only)}
    result.update(env)
    return result


# --- the dialect -----------------------------------------------------------------------------


def environment_info(server: FileHost) -> c.EnvironmentInfo:
    shell = os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = os.environ.get("HOME", "/")
    return c.EnvironmentInfo(
        shell=c.ShellInfo(name=os.path.basename(shell), path=shell),
        cwd=c.uri_from_path(server.default_cwd),
        user_home_dir=c.uri_from_path(home),
        temp_dir=c.uri_from_path(os.environ.get("TMPDIR") or SLASH_TMP),
        executor_version=SERVER_VERSION,
    )


def encode_event(event: p.ProcessEvent) -> str:
    if isinstance(event, p.OutputEvent):
        return c.encode_output(event.process_id, event.seq, event.stream.value, event.chunk)
    if isinstance(event, p.ExitedEvent):
        return c.encode_exited(event.process_id, event.seq, event.exit_code, bool(event.sandbox_denied))
    return c.encode_closed(event.process_id, event.seq)


class CodexDialect:
    """One Codex client's connection, as far as its dialect differs from ours."""

    def __init__(self, server: FileHost, *, max_mode: SandboxMode | None = None) -> None:
        self._server = server
        self._max_mode = max_mode  # the token's own sandbox ceiling
        self._files = FileOperations(server, max_mode=max_mode)

    def initialize_result(self, session: Session) -> c.InitializeResult:
        return c.InitializeResult(session_id=session.id, environment_info=environment_info(self._server))

    async def dispatch(self, request: p.Request, session: Session, enqueue: Enqueue, answer_read: AnswerRead) -> Any:
        """Answer one request; returns the result, or None when it was already queued."""
        params = request.params
        match request.method:
            case "process/start":
                ours = self._start_params(params)
                result, process = session.start(ours, max_mode=self._max_mode)
                sandbox_type = SANDBOX_TYPE_OF.get(result.sandbox_type, "linuxSeccomp")
                try:
                    await enqueue(c.encode_result(request.id, c.StartResult(process_id=result.process_id, sandbox_type=sandbox_type)))
                finally:
                    session.begin(process)
                return None
            case "process/read":
                # Through the connection's bounded path, as our own reads (room first).
                await answer_read(self._read_params(params), lambda result: c.encode_result(request.id, self._read_result(result)))
                return None
            case "process/write":
                written = await session.write(p.WriteParams(process_id=params.process_id, chunk=params.chunk, write_id=params.write_id))
                return c.WriteResult(status=written.status.value)
            case "process/signal":
                session.signal(p.SignalParams(process_id=params.process_id, signal=p.SignalName.INTERRUPT))
                return c.EmptyResult()
            case "process/terminate":
                return c.TerminateResult(running=session.terminate(p.TerminateParams(process_id=params.process_id)).running)
            case "environment/info":
                return environment_info(self._server)
        return await self._files.dispatch(request.method, params)

    def _start_params(self, params: c.StartParams) -> p.StartParams:
        if params.arg0 is not None and params.arg0 != params.argv[0]:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS, "invalid params: an arg0 different from argv[0] is not supported @ $.params.arg0"
            )
        cwd = path_of(params.cwd, "cwd")
        if params.managed_network is not None or params.enforce_managed_network:
            log.info("process %s: managed network requested; running it without network", params.process_id)
        policy = policy_for(c.parse_sandbox(params.sandbox), cwd=cwd, enforce_managed_network=params.enforce_managed_network)
        env = environment_for(params.env_policy, params.env, inherited_environment())
        try:
            return p.StartParams(
                process_id=params.process_id,
                argv=params.argv,
                cwd=cwd,
                env=env,
                inherit_env=False,
                # Like Codex's own server: with tty the terminal is stdin whatever pipeStdin
                # says, stdout and stderr merged into stream "pty", Codex's 24x80 size.
                pipe_stdin=params.pipe_stdin,
                tty=params.tty,
                sandbox=policy,
            )
        except (p.FieldError, ValueError) as exc:
            raise _invalid(exc, "cwd") from None

    @staticmethod
    def _read_params(params: c.ReadParams) -> p.ReadParams:
        try:
            return p.ReadParams(
                process_id=params.process_id,
                after_seq=params.after_seq or 0,
                max_bytes=params.max_bytes or None,
                wait_ms=params.wait_ms or 0,
            )
        except (p.FieldError, ValueError) as exc:
            raise _invalid(exc, "afterSeq") from None

    @staticmethod
    def _read_result(result: p.ReadResult) -> c.ReadResult:
        return c.ReadResult(
            chunks=tuple(c.OutputChunk(seq=chunk.seq, stream=c.CodexStream(chunk.stream.value), chunk=chunk.chunk) for chunk in result.chunks),
            next_seq=result.next_seq,
            exited=result.exited,
            exit_code=result.exit_code,
            closed=result.closed,
            failure=result.failure,
            sandbox_denied=bool(result.sandbox_denied),
        )
