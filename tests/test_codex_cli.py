"""Our server with the real Codex CLI as its client: ``codex exec`` and a scripted model.

Each test runs the agent non-interactively (``codex_peer.py``); every command and file
operation of the agent reaches our server through Codex's own exec-server client, and the
assertions are on what the *model* was told — the output, the exit code, the denial — and
on the workspace. The one-shot and stdin runs are repeated against ``codex exec-server``
itself and must tell the model the same thing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
import trio

from exec_server.sandbox import SandboxSettings
from protocol import SandboxMode

from codex_peer import SESSION_ID, ExecRun, call, codex_binary, codex_exec, codex_exec_server, patch, say, scratch_workspace
from conftest import RunningServer, StartServer
from rawclient import no_leftover_processes  # noqa: F401  (fixture used by name)

NOBODY: Final = 65534
TEST_TIMEOUT: Final = 240.0
FIFTY_MB: Final = 50 * 1024 * 1024


@pytest.fixture(autouse=True, scope="module")
def _codex_installed() -> None:
    codex_binary()  # skips the module when npm is missing


@pytest.fixture
def workspace(no_leftover_processes: None) -> Iterator[Path]:
    with scratch_workspace(NOBODY) as path:
        yield path


@pytest.fixture
async def sandboxed(start_server: StartServer) -> RunningServer:
    return await start_server(sandbox=SandboxSettings(default_mode=SandboxMode.READ_ONLY, audit_denials="off"))


async def _ours(server: RunningServer, steps: list[dict[str, object]], workspace: Path, tmp_path: Path, *args: str) -> ExecRun:
    run = await codex_exec(steps, workspace=workspace, home=tmp_path / "home", url=server.url, token=server.token, args=args)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


async def _theirs(steps: list[dict[str, object]], workspace: Path, tmp_path: Path, *args: str) -> ExecRun:
    async with codex_exec_server(tmp_path / "their-home") as url:
        run = await codex_exec(steps, workspace=workspace, home=tmp_path / "home2", url=url, token=None, args=args)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _exit_and_lines(output: str) -> tuple[str, list[str]]:
    """What the model was told: the exit line and the output lines (sorted: stdout and stderr
    are two pipes, and their interleaving is not part of the contract)."""
    exit_line = re.search(r"Process exited with code \d+", output)
    assert exit_line is not None, output
    _, _, body = output.partition("Output:\n")
    return exit_line.group(0), sorted(line for line in body.splitlines() if line)


async def test_a_one_shot_command_tells_the_model_what_codex_exec_server_does(
    sandboxed: RunningServer, workspace: Path, tmp_path: Path
) -> None:
    steps = [call("exec_command", cmd="echo hello; echo oops >&2; exit 3", login=False, yield_time_ms=10000), say("done")]
    with trio.fail_after(TEST_TIMEOUT):
        ours = await _ours(sandboxed, steps, workspace, tmp_path)
        theirs = await _theirs(steps, workspace, tmp_path)
    assert len(ours.tool_outputs) == 1, ours.stderr[-2000:]
    assert _exit_and_lines(ours.tool_outputs[0]) == ("Process exited with code 3", ["hello", "oops"])
    assert _exit_and_lines(ours.tool_outputs[0]) == _exit_and_lines(theirs.tool_outputs[0])


async def test_a_command_fed_through_stdin(sandboxed: RunningServer, workspace: Path, tmp_path: Path) -> None:
    # Codex starts non-tty commands without a stdin pipe: the command's own stdin must be at
    # EOF at once (a `read` that hung would hang the agent), and a pipe inside it works.
    steps = [
        call("exec_command", cmd="printf 'zeta\\nalpha\\n' | sort; read -r line || echo stdin-at-eof", login=False, yield_time_ms=10000),
        say("done"),
    ]
    with trio.fail_after(TEST_TIMEOUT):
        ours = await _ours(sandboxed, steps, workspace, tmp_path)
        theirs = await _theirs(steps, workspace, tmp_path)
    exit_line, _ = _exit_and_lines(ours.tool_outputs[0])
    assert exit_line == "Process exited with code 0"
    assert ours.tool_outputs[0].partition("Output:\n")[2] == "alpha\nzeta\nstdin-at-eof\n"
    assert _exit_and_lines(ours.tool_outputs[0]) == _exit_and_lines(theirs.tool_outputs[0])


async def test_workspace_write_blocks_a_write_to_etc_and_reports_it(sandboxed: RunningServer, workspace: Path, tmp_path: Path) -> None:
    probe = Path("/etc") / f"codex-probe-{secrets.token_hex(4)}"
    steps = [
        call("exec_command", cmd=f"echo inside > ok.txt && echo pwned > {probe}", login=False, yield_time_ms=10000),
        say("done"),
    ]
    with trio.fail_after(TEST_TIMEOUT):
        run = await _ours(sandboxed, steps, workspace, tmp_path, "-s", "workspace-write")
    assert not probe.exists()
    assert (workspace / "ok.txt").read_text() == "inside\n"  # the workspace itself is writable
    output = run.tool_outputs[0]
    assert "Process exited with code 1" in output
    assert re.search(rf"{re.escape(str(probe))}: (Permission denied|Read-only file system)", output), output
    # And Codex's client was told it was the sandbox (process/exited sandboxDenied: true).
    [process] = [
        process
        for session in sandboxed.server.sessions.values()
        for process in session.processes.values()
        if str(probe) in " ".join(process.argv)
    ]
    assert process.exited is not None and process.exited.sandbox_denied is True


async def test_apply_patch_creates_and_edits_a_file_in_the_remote_workspace(
    sandboxed: RunningServer, workspace: Path, tmp_path: Path
) -> None:
    steps = [
        patch("*** Begin Patch\n*** Add File: notes.txt\n+alpha\n+beta\n*** End Patch\n"),
        patch("*** Begin Patch\n*** Update File: notes.txt\n@@\n alpha\n-beta\n+gamma\n*** End Patch\n"),
        say("done"),
    ]
    with trio.fail_after(TEST_TIMEOUT):
        run = await _ours(sandboxed, steps, workspace, tmp_path, "-s", "workspace-write")
    assert [("Success" in output) for output in run.tool_outputs] == [True, True], run.tool_outputs
    assert "A notes.txt" in run.tool_outputs[0] and "M notes.txt" in run.tool_outputs[1]
    assert (workspace / "notes.txt").read_text() == "alpha\ngamma\n"


async def test_apply_patch_outside_the_writable_roots_fails_like_a_command_would(
    sandboxed: RunningServer, workspace: Path, tmp_path: Path
) -> None:
    target = Path("/etc") / f"codex-patch-{secrets.token_hex(4)}"
    steps = [patch(f"*** Begin Patch\n*** Add File: {target}\n+x\n*** End Patch\n"), say("done")]
    with trio.fail_after(TEST_TIMEOUT):
        run = await _ours(sandboxed, steps, workspace, tmp_path, "-s", "workspace-write")
    assert not target.exists()
    assert "Success" not in run.tool_outputs[0], run.tool_outputs


async def test_fifty_megabytes_of_output_without_failure(sandboxed: RunningServer, workspace: Path, tmp_path: Path) -> None:
    cmd = f"head -c {FIFTY_MB} /dev/zero | tr '\\0' a | fold -w 100; echo END"
    steps = [call("exec_command", cmd=cmd, login=False, yield_time_ms=30000), say("done")]
    with trio.fail_after(TEST_TIMEOUT):
        run = await _ours(sandboxed, steps, workspace, tmp_path)
    output = run.tool_outputs[0]
    assert "Process exited with code 0" in output, output[:2000]
    assert output.rstrip().endswith("END")
    # Codex truncates what it shows the model; the count it reports is of the whole stream.
    tokens = re.search(r"Original token count: (\d+)", output)
    assert tokens is not None and int(tokens.group(1)) > FIFTY_MB // 8


async def test_a_long_running_command_the_model_polls_to_its_end(sandboxed: RunningServer, workspace: Path, tmp_path: Path) -> None:
    # The agent yields after 250 ms with the command still running, then polls it: the rest
    # of its output and its exit reach the model through the same (lossless) event stream.
    steps = [
        call("exec_command", cmd="echo early; sleep 3; echo late", login=False, yield_time_ms=500),
        call("write_stdin", session_id=SESSION_ID, chars="", yield_time_ms=10000),
        say("done"),
    ]
    with trio.fail_after(TEST_TIMEOUT):
        run = await _ours(sandboxed, steps, workspace, tmp_path)
    first, second = run.tool_outputs
    assert "Process running with session ID" in first, first
    assert "Process exited with code 0" in second and second.endswith("late\n"), second
    assert "early" in first + second
