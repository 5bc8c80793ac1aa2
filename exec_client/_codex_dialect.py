"""Codex's exec-server dialect (docs/protocol.md §13.3): the translation ``CodexDialect``,
our sandbox policy as Codex's permissions profile, and what a Codex ``initialize`` answer
says. Imported only when a connection turns out to speak it (``_dialect.dialect_for``): a
client of our own server never loads Codex's message shapes (``protocol._codex``), a tenth of
the CLI's start-up.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Final

import protocol as p
from protocol import _codex as codex
from protocol._messages import DEFAULT_READ_ONLY_SUBPATHS

from ._dialect import CODEX_NAME, Dialect
from ._errors import NotSupported, ServerError
from ._info import ServerInfo

# Codex's server keeps a detached session 30 s (its source; 0.169 measured here still resumed
# one detached 35 s before). It does not say so on the wire: the client assumes 30 s.
CODEX_DETACHED_SESSION_TTL_MS: Final = 30_000
_CODEX_SERVER_NAME: Final = "codex exec-server"


def _unsupported(what: str) -> NotSupported:
    return NotSupported(f"the server speaks Codex's exec-server dialect, which has no {what}")


class CodexDialect:
    """The Codex exec-server dialect (docs/protocol.md §13.3).

    Args:
        server_cwd: the server's working directory (``initialize``'s ``environmentInfo.cwd``,
            a path): where a command without ``cwd`` runs, and what a relative one is
            relative to (Codex requires an absolute ``cwd``).
    """

    name: Final = CODEX_NAME
    can_close_stdin: Final = False
    can_list: Final = False
    # Codex's server leaves Nagle on: without quick ACKs a one-shot takes 48 ms, not 5.
    acks_at_once: Final = True
    # Its two pipes and the exit race to the wire (a stderr chunk and the exit were seen 43
    # events late on a 20 MB stream), but nothing is dropped while a connection is attached:
    # a hole is a reorder, worth waiting for rather than a read.
    min_gap_grace: Final = 1.0

    def __init__(self, server_cwd: str | None) -> None:
        self.server_cwd = server_cwd

    # --- requests --------------------------------------------------------------------------

    def encode_request(self, request_id: int, params: Any, method: str) -> str:
        wire_method, wire_params = self._translate(params, method)
        return json.dumps({"id": request_id, "method": wire_method, "params": wire_params}, separators=(",", ":"))

    def _translate(self, params: Any, method: str) -> tuple[str, Any]:
        if isinstance(params, p.StartParams):
            return method, self._start(params)
        if isinstance(params, p.ReadParams):
            return method, {
                "processId": params.process_id,
                "afterSeq": params.after_seq,
                "maxBytes": params.max_bytes,
                "waitMs": params.wait_ms,
            }
        if isinstance(params, p.WriteParams):
            if params.eof:
                raise _unsupported("way to close a command's stdin (process/write eof)")
            return method, {
                "processId": params.process_id,
                "chunk": p.unstructure(params.chunk),
                "writeId": params.write_id,
            }
        if isinstance(params, p.SignalParams):
            if params.signal is p.SignalName.INTERRUPT:
                return method, {"processId": params.process_id, "signal": "interrupt"}
            if params.signal is p.SignalName.KILL:
                # Codex's terminate is a kill of the process group (no grace).
                return "process/terminate", {"processId": params.process_id}
            raise _unsupported(f"signal {params.signal.value!r} (only interrupt and kill)")
        if isinstance(params, p.TerminateParams):
            # Codex kills at once: there is no grace period to pass.
            return method, {"processId": params.process_id}
        if isinstance(params, p.InitializeParams):
            return method, {"clientName": params.client_name, "resumeSessionId": params.resume_session_id}
        if method in ("process/list", "process/release", "process/resize"):
            raise _unsupported(method)
        # fs/*, environment/info, initialized...: Codex's shapes are ours.
        return method, p.unstructure(params) if params is not None else {}

    def _start(self, params: p.StartParams) -> dict[str, Any]:
        if params.timeout_ms is not None:
            raise _unsupported("command timeout")
        if params.limits is not None:
            raise _unsupported("resource limits")
        if params.retain_bytes is not None or params.retain_after_close_ms is not None:
            raise _unsupported("retention settings")
        if params.size is not None:
            raise _unsupported("terminal size (its PTY has a fixed one)")
        cwd = self._cwd(params.cwd)
        return {
            "processId": params.process_id,
            "argv": list(params.argv),
            "cwd": codex.uri_from_path(cwd),
            # Ours adds env to the server's environment: Codex's does that only with an
            # envPolicy that inherits it all (its default excludes would drop *KEY*,
            # *SECRET*, *TOKEN* names, which ours keeps).
            "envPolicy": (
                {"inherit": "all", "ignoreDefaultExcludes": True, "exclude": [], "set": {}, "includeOnly": []}
                if params.inherit_env
                else None
            ),
            "env": dict(params.env or {}),
            "tty": params.tty,
            "pipeStdin": params.pipe_stdin,
            "arg0": None,
            "sandbox": permissions_profile(params.sandbox, cwd),
        }

    def _cwd(self, cwd: str | None) -> str:
        if cwd is not None and cwd.startswith("/"):
            return cwd
        if self.server_cwd is None:
            raise _unsupported("default working directory (it did not say its own): pass an absolute cwd")
        return self.server_cwd if cwd is None else posixpath.join(self.server_cwd, cwd)

    # --- answers and events ------------------------------------------------------------------

    def decode_frame(self, frame: str | bytes | bytearray) -> p.Message:
        return codex.decode_from_server(frame)

    def decode_result(self, method: str, params: Any, raw: Any) -> Any:
        if method == "process/start":
            return codex.decode_start_result(raw)
        if method == "process/read":
            return codex.decode_read_result(raw, after_seq=params.after_seq, max_bytes=params.max_bytes)
        if method == "process/write":
            return codex.decode_write_result(raw)
        if method == "process/terminate":
            return codex.decode_terminate_result(raw)
        if method == "process/signal":
            if params.signal is p.SignalName.KILL:  # sent as process/terminate
                return p.SignalResult(delivered=codex.decode_terminate_result(raw).running)
            # Codex answers {}: it cannot say whether the signal found the process.
            return p.SignalResult(delivered=True)
        if method not in p.REQUEST_METHODS:
            return raw  # fs/*, environment/info: Codex's shapes are ours; the caller decodes
        return p.decode_result(method, raw)

    def error(self, method: str, code: int, message: str, data: Any) -> ServerError:
        return ServerError.from_error(*codex.translate_error(method, code, message, data))


def _special(kind: str, access: str, subpath: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"kind": kind}
    entry: dict[str, Any] = {"path": {"type": "special", "value": value}, "access": access}
    if subpath is not None:
        value["subpath"] = subpath
        entry["missing_path_behavior"] = "skip"
    return entry


def permissions_profile(policy: p.SandboxPolicy | None, cwd: str) -> dict[str, Any] | None:
    """Our ``SandboxPolicy`` as the permissions profile Codex's ``process/start`` takes.

    The profile is as narrow as ours or narrower, never wider: ``readOnly`` reads everywhere
    and writes nowhere; ``workspaceWrite`` writes ``cwd`` and each writable root (Codex's
    ``project_roots``, with our read-only carve-outs — ``.git``, ``.codex``, ``.agents`` by
    default — as read-only ``project_roots`` subpaths, skipped when missing, as Codex's own
    client sends them) but gets no writable ``TMPDIR`` (ours gives a private one; Codex's
    ``tmpdir`` would be the server's shared one, wider). ``network`` is ``enabled`` or
    ``restricted``. ``None`` (the server's default) and ``none`` send ``null``: Codex's
    server then runs the command unsandboxed (its default).
    """
    if policy is None or policy.mode is p.SandboxMode.NONE:
        return None
    entries = [_special("root", "read")]
    roots = [cwd]
    if policy.mode is p.SandboxMode.WORKSPACE_WRITE:
        roots += [root for root in policy.writable_roots if root != cwd]
        entries.append(_special("project_roots", "write"))
        subpaths = DEFAULT_READ_ONLY_SUBPATHS if policy.read_only_subpaths is None else policy.read_only_subpaths
        entries += [_special("project_roots", "read", subpath) for subpath in subpaths]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "enabled" if policy.network else "restricted",
        },
        "cwd": codex.uri_from_path(cwd),
        "workspaceRoots": [codex.uri_from_path(root) for root in roots],
        # Required by Codex 0.169 (Windows settings; these are the values its own client sends).
        "windowsSandboxLevel": "disabled",
        "windowsSandboxProxySettingsMode": "reconcile",
        "useLegacyLandlock": False,
    }


def codex_dialect_for(raw: dict[str, Any], *, resume_session_id: str | None) -> tuple[Dialect, ServerInfo]:
    """The Codex dialect and what its ``initialize`` answer ``raw`` (with a string
    ``sessionId``) says."""
    environment = raw.get("environmentInfo")
    environment = environment if isinstance(environment, dict) else {}
    cwd = _path_or_none(environment.get("cwd"))
    version = environment.get("executorVersion")
    info = ServerInfo(
        session_id=raw["sessionId"],
        server_name=_CODEX_SERVER_NAME,
        server_version=version if isinstance(version, str) else "",
        protocol_version=0,
        # Codex's server pushes every event of every process and never drops one while
        # attached (it advertises nothing; the events come all the same).
        push_events=True,
        lossless=True,
        release=False,
        binary_output=False,
        # tty: true gives a pty of its own fixed size (no size, no process/resize).
        pty=True,
        sandbox={},
        limits={"detachedSessionTtlMs": CODEX_DETACHED_SESSION_TTL_MS},
        # Codex answers a resume with the session's own id (an unknown one is an error).
        resumed=resume_session_id is not None and raw["sessionId"] == resume_session_id,
        dialect=CODEX_NAME,
        cwd=cwd,
        # Its stdout, stderr and exit tasks race to the wire: even closed may come early.
        in_order=False,
    )
    return CodexDialect(cwd), info




def _path_or_none(uri: Any) -> str | None:
    if not isinstance(uri, str):
        return None
    try:
        return codex.path_from_uri(uri, "environmentInfo.cwd")
    except p.FieldError:
        return None
