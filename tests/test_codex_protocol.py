"""The Codex dialect, sans-io: detection, decoding, encoding, the profile and env mappings."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from exec_server._codex import encode_event, environment_for
from exec_server._codex_sandbox import policy_for
from protocol import _codex as c
from protocol import (
    ClosedEvent,
    ErrorCode,
    ExitedEvent,
    OutputEvent,
    ProtocolError,
    SandboxMode,
    SandboxPolicy,
    Stream,
)

WORKSPACE = "/srv/work"


def _entry(kind: str, access: str, subpath: str | None = None, skip: bool = False) -> dict[str, Any]:
    value: dict[str, Any] = {"kind": kind}
    if subpath is not None:
        value["subpath"] = subpath
    entry: dict[str, Any] = {"path": {"type": "special", "value": value}, "access": access}
    if skip:
        entry["missing_path_behavior"] = "skip"
    return entry


def _profile(*entries: dict[str, Any], network: str = "restricted", cwd: str = WORKSPACE) -> dict[str, Any]:
    # The shape Codex 0.169 sends for `-s read-only` / `-s workspace-write` (captured on the wire).
    return {
        "permissions": {"type": "managed", "file_system": {"type": "restricted", "entries": list(entries)}, "network": network},
        "cwd": c.uri_from_path(cwd),
        "workspaceRoots": [c.uri_from_path(cwd)],
        "windowsSandboxLevel": "disabled",
        "windowsSandboxProxySettingsMode": "reconcile",
        "useLegacyLandlock": False,
    }


def _policy(raw: Any, *, cwd: str = WORKSPACE, enforce_managed_network: bool = False) -> SandboxPolicy | None:
    return policy_for(c.parse_sandbox(raw), cwd=cwd, enforce_managed_network=enforce_managed_network)


# --- detection and decoding -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "codex"),
    [
        ('{"id":1,"method":"initialize","params":{"clientName":"codex-environment","resumeSessionId":null}}', True),
        ('{"id":1,"method":"initialize","params":{"clientName":"x","protocolVersion":1}}', False),
        ('{"id":1,"method":"process/start","params":{}}', False),
        ("not json", False),
        ('{"id":1,"method":"initialize","params":[1]}', False),
    ],
)
def test_a_codex_initialize_is_one_without_protocol_version(text: str, codex: bool) -> None:
    assert c.is_codex_initialize(text) is codex


def test_the_start_codex_sends_decodes_and_fields_a_newer_codex_adds_are_ignored() -> None:
    params = {
        "processId": "82976-f0b1e075",
        "metadata": {"threadId": "t", "toolCallId": "call_0"},
        "argv": ["/bin/bash", "-lc", "echo hi"],
        "cwd": "file:///srv/work",
        "envPolicy": {"inherit": "all", "ignoreDefaultExcludes": True, "exclude": ["CODEX_*"], "set": {}, "includeOnly": []},
        "env": {"TERM": "dumb"},
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
        "sandbox": None,
        "enforceManagedNetwork": False,
        "managedNetwork": None,
        "someFutureField": {"x": 1},
    }
    request = c.decode(json.dumps({"id": 15, "method": "process/start", "params": params}))
    assert request.method == "process/start"
    assert request.params.argv == ("/bin/bash", "-lc", "echo hi")
    assert request.params.env_policy.inherit is c.EnvInherit.ALL
    assert request.params.env_policy.exclude == ("CODEX_*",)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"processId": "p", "argv": "echo", "cwd": "file:///", "env": {}, "tty": False}, "$.params.argv"),
        ({"processId": "p", "argv": ["true"], "cwd": "file:///", "env": {}, "tty": "no"}, "$.params.tty"),
        ({"processId": "p", "argv": ["true"], "cwd": "file:///", "env": {"A": 1}, "tty": False}, "$.params.env"),
        ({"processId": "bad id!", "argv": ["true"], "cwd": "file:///", "env": {}, "tty": False}, "$.params.processId"),
        ({"argv": ["true"], "cwd": "file:///", "env": {}, "tty": False}, "$.params"),
    ],
)
def test_wrong_types_are_refused_with_the_path(params: dict[str, Any], needle: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        c.decode(json.dumps({"id": 3, "method": "process/start", "params": params}))
    assert caught.value.code == ErrorCode.INVALID_PARAMS
    assert caught.value.request_id == 3
    assert needle in caught.value.message


def test_read_with_null_fields_decodes() -> None:
    request = c.decode('{"id":2,"method":"process/read","params":{"processId":"p","afterSeq":null,"maxBytes":null,"waitMs":null}}')
    assert (request.params.after_seq, request.params.max_bytes, request.params.wait_ms) == (None, None, None)


def test_an_unknown_method_is_method_not_found_and_an_unknown_notification_is_ignored() -> None:
    with pytest.raises(ProtocolError) as caught:
        c.decode('{"id":8,"method":"fs/watchMissing","params":{}}')
    assert caught.value.code == ErrorCode.METHOD_NOT_FOUND and caught.value.request_id == 8
    with pytest.raises(ProtocolError) as caught:
        c.decode('{"method":"somethingNew","params":{}}')
    assert caught.value.from_notification


# --- encoding ---------------------------------------------------------------------------------


def test_errors_use_codex_codes_and_no_jsonrpc_member() -> None:
    unknown = json.loads(c.encode_error(ProtocolError(ErrorCode.UNKNOWN_PROCESS, "unknown process 'p'", request_id=4)))
    assert unknown == {"id": 4, "error": {"code": -32600, "message": "unknown process 'p'"}}
    # Ours -32004 is "shutting down"; Codex's -32004 is "not found" (ours -32009).
    shutting = json.loads(c.encode_error(ProtocolError(ErrorCode.SHUTTING_DOWN, "server shutting down", request_id=5)))
    assert shutting["error"]["code"] == -32603
    missing = ProtocolError(ErrorCode.FILE_NOT_FOUND, "No such file or directory (os error 2)", request_id=6)
    assert json.loads(c.encode_error(missing))["error"]["code"] == -32004


def test_events_have_exactly_the_fields_codex_knows() -> None:
    output = json.loads(encode_event(OutputEvent(process_id="p", seq=1, stream=Stream.STDOUT, chunk=b"hi\n")))
    assert output == {"method": "process/output", "params": {"processId": "p", "seq": 1, "stream": "stdout", "chunk": "aGkK"}}
    exited = json.loads(encode_event(ExitedEvent(process_id="p", seq=2, exit_code=137, signal="SIGKILL", timed_out=False)))
    # sandboxDenied is always a boolean, even when the server had no verdict.
    assert exited == {"method": "process/exited", "params": {"processId": "p", "seq": 2, "exitCode": 137, "sandboxDenied": False}}
    closed = json.loads(encode_event(ClosedEvent(process_id="p", seq=3)))
    assert closed == {"method": "process/closed", "params": {"processId": "p", "seq": 3}}


@pytest.mark.parametrize("path", ["/", "/srv/a b/ü", "/tmp/100%"])
def test_file_uris_round_trip(path: str) -> None:
    assert c.path_from_uri(c.uri_from_path(path)) == path


@pytest.mark.parametrize("uri", ["/srv/work", "http://host/x", "file://otherhost/x", "file:relative", "file:///a%00b"])
def test_only_absolute_local_file_uris_are_paths(uri: str) -> None:
    with pytest.raises(ValueError):
        c.path_from_uri(uri)


# --- the permissions profile ------------------------------------------------------------------


def test_null_sandbox_means_the_servers_default() -> None:
    assert _policy(None) is None


def test_read_only_profile_is_read_only_without_network() -> None:
    assert _policy(_profile(_entry("root", "read"))) == SandboxPolicy(mode=SandboxMode.READ_ONLY)


def test_workspace_write_profile_maps_to_workspace_write_with_tmp(tmp_path: Any) -> None:
    workspace = str(tmp_path)
    raw = _profile(
        _entry("root", "read"),
        _entry("project_roots", "write"),
        _entry("slash_tmp", "write"),
        _entry("tmpdir", "write"),
        # Codex's carve-outs: missing here, so skipped as Codex skips them.
        _entry("project_roots", "read", ".git", skip=True),
        _entry("project_roots", "read", ".codex", skip=True),
        cwd=workspace,
    )
    # Exactly the profile's carve-outs: none exist, so none (not our defaults).
    assert _policy(raw, cwd=workspace) == SandboxPolicy(
        mode=SandboxMode.WORKSPACE_WRITE, writable_roots=(workspace, "/tmp"), read_only_subpaths=()
    )


def test_an_existing_read_only_carve_out_becomes_a_read_only_subpath(tmp_path: Any) -> None:
    workspace = str(tmp_path)
    os.mkdir(os.path.join(workspace, ".git"))
    raw = _profile(_entry("root", "read"), _entry("project_roots", "write"), _entry("project_roots", "read", ".git", skip=True), cwd=workspace)
    assert _policy(raw, cwd=workspace) == SandboxPolicy(
        mode=SandboxMode.WORKSPACE_WRITE, writable_roots=(workspace,), read_only_subpaths=(".git",)
    )


def test_a_profile_that_restricts_reads_is_refused() -> None:
    with pytest.raises(ProtocolError, match="does not read the whole file system"):
        _policy(_profile(_entry("project_roots", "read")))


def test_a_cwd_outside_the_writable_roots_is_refused() -> None:
    raw = _profile(_entry("root", "read"), _entry("slash_tmp", "write"))
    with pytest.raises(ProtocolError, match="cwd"):
        _policy(raw)


def test_network_is_enabled_only_when_asked_and_never_under_managed_networking() -> None:
    raw = _profile(_entry("root", "read"), network="enabled")
    assert _policy(raw) == SandboxPolicy(mode=SandboxMode.READ_ONLY, network=True)
    assert _policy(raw, enforce_managed_network=True) == SandboxPolicy(mode=SandboxMode.READ_ONLY, network=False)
    # Without a profile the default may allow network: managed networking pins it off.
    assert _policy(None, enforce_managed_network=True) == SandboxPolicy(mode=SandboxMode.READ_ONLY)


def test_unrestricted_file_system_keeps_the_sandbox_and_disabled_asks_for_none() -> None:
    unrestricted = {"permissions": {"type": "managed", "file_system": {"type": "unrestricted"}, "network": "restricted"}}
    assert _policy(unrestricted) == SandboxPolicy(mode=SandboxMode.WORKSPACE_WRITE, writable_roots=("/",))
    assert _policy({"permissions": {"type": "disabled"}}) == SandboxPolicy(mode=SandboxMode.NONE)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"permissions": {"type": "sandboxish"}}, "$.params.sandbox.permissions.type"),
        (_profile({"path": {"type": "glob_pattern", "pattern": "**/*.env"}, "access": "none"}), "unsupported path type"),
        (_profile(_entry("somewhere_new", "read")), "unknown special path"),
        (_profile(_entry("root", "admin")), "unknown access"),
        (_profile(_entry("project_roots", "write", "../escape")), "subpath"),
        ("yes", "expected an object"),
    ],
)
def test_unknown_profile_pieces_are_refused(raw: Any, needle: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        _policy(raw)
    assert caught.value.code == ErrorCode.INVALID_PARAMS
    assert needle in caught.value.message


# --- the environment ---------------------------------------------------------------------------

BASE = {"PATH": "/usr/bin", "HOME": "/root", "OPENAI_API_KEY": "sk", "GH_TOKEN": "t", "LANG": "C", "CODEX_X": "1"}


def _env_policy(**fields: Any) -> c.EnvPolicy:
    return c.converter.structure({"inherit": "all", **fields}, c.EnvPolicy)


def test_env_policy_all_drops_secrets_unless_told_not_to() -> None:
    env = environment_for(_env_policy(), {"TERM": "dumb"}, BASE)
    assert "OPENAI_API_KEY" not in env and "GH_TOKEN" not in env
    assert env["PATH"] == "/usr/bin" and env["TERM"] == "dumb"
    assert environment_for(_env_policy(ignoreDefaultExcludes=True), {}, BASE)["OPENAI_API_KEY"] == "sk"


def test_env_policy_exclude_set_include_only_and_core() -> None:
    env = environment_for(_env_policy(ignoreDefaultExcludes=True, exclude=["codex_*"], set={"A": "1"}), {}, BASE)
    assert "CODEX_X" not in env and env["A"] == "1"
    assert environment_for(_env_policy(includeOnly=["PATH", "HOME"]), {"TERM": "x"}, BASE) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "TERM": "x",
    }
    assert environment_for(_env_policy(inherit="core"), {}, BASE) == {"PATH": "/usr/bin", "HOME": "/root"}
    assert environment_for(_env_policy(inherit="none"), {"X": "y"}, BASE) == {"X": "y"}
    assert environment_for(None, {"X": "y"}, BASE) == {"X": "y"}


def test_profiles_and_env_patterns_are_bounded() -> None:
    huge = _profile(*[_entry("root", "read")] * 257)
    with pytest.raises(ProtocolError, match="at most 256"):
        _policy(huge)
    roots = _profile(_entry("root", "read"))
    roots["workspaceRoots"] = [c.uri_from_path(f"/r{i}") for i in range(65)]
    with pytest.raises(ProtocolError, match="at most 64"):
        _policy(roots)
    params = {"processId": "p", "argv": ["true"], "cwd": "file:///", "env": {}, "tty": False}
    for field in ("exclude", "includeOnly"):
        policy = {"inherit": "all", field: ["X*"] * 257}
        with pytest.raises(ProtocolError, match=f"envPolicy.{field}"):
            c.decode(json.dumps({"id": 1, "method": "process/start", "params": {**params, "envPolicy": policy}}))
