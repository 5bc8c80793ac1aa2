"""A command's private temp dir: whatever it leaves there, removing it never hurts the server."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Final

import trio

from exec_server import _tempdir
from rawclient import PidWatch, no_leftover_processes, open_raw_client, output_of  # noqa: F401  (fixture used by name)
from security_support import ChildServer, child_server

WORKSPACE_WRITE: Final = {"mode": "workspaceWrite"}
NESTED_DIRS: Final = 1200
MANY_FILES: Final = 100_000


async def _temp_dir_of(server: ChildServer, process_id: str, script: str, cwd: Path) -> Path:
    """Run ``script`` sandboxed; it must print its TMPDIR last. Returns that path."""
    async with open_raw_client(server.url, server.token) as client:
        await client.initialize()
        events = await client.run(process_id, ["sh", "-c", script], sandbox=WORKSPACE_WRITE, cwd=str(cwd))
        assert events[-2].params["exitCode"] == 0, output_of(events, "stderr")
        return Path(output_of(events).decode().split()[-1])


async def _stop(server: ChildServer) -> int:
    """SIGTERM: the drain waits for every process's cleanup; returns the exit status."""
    server.cli.process.send_signal(signal.SIGTERM)
    return await server.cli.process.wait()


async def test_a_thousand_nested_dirs_in_tmpdir_are_removed_and_the_server_lives_on(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    nested = "/".join(["d"] * NESTED_DIRS)
    script = f'cd "$TMPDIR" && mkdir -p {nested} && ln -s / "$TMPDIR/{nested}/root" && echo "$TMPDIR"'
    with trio.fail_after(60):
        async with child_server(tmp_path) as server:
            temp = await _temp_dir_of(server, "deep", script, tmp_path)
            # The server still serves (the cleanup ran or runs in a thread of its own)...
            async with open_raw_client(server.url, server.token) as client:
                await client.initialize()
                events = await client.run("after", ["echo", "alive"])
                assert output_of(events) == b"alive\n"
            # ...and its drain, which waits for every cleanup, ends in a clean exit.
            assert await _stop(server) == 0, bytes(server.cli.stderr)
    assert not temp.exists()
    assert Path("/etc/passwd").exists()  # the planted link to / was not followed


async def test_removing_100k_files_does_not_stall_another_client(tmp_path: Path, no_leftover_processes: None) -> None:
    script = f'cd "$TMPDIR" && seq {MANY_FILES} | xargs touch && echo "$TMPDIR"'
    with trio.fail_after(120):
        async with child_server(tmp_path) as server:
            temp = await _temp_dir_of(server, "many", script, tmp_path)
            # The removal started when "many" closed; another client's one-shot is answered
            # while it is still going on (on the event loop it would only be after it).
            async with open_raw_client(server.url, server.token) as other:
                await other.initialize()
                events = await other.run("quick", ["true"])
                assert events[-1].kind == "closed"
                assert temp.exists(), "the removal ended before the other client's one-shot"
            assert await _stop(server) == 0, bytes(server.cli.stderr)
    assert not temp.exists()


async def test_private_temp_dirs_of_a_killed_server_are_removed_at_the_next_start(
    tmp_path: Path, no_leftover_processes: None
) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    temp_root.chmod(0o1777)
    env: dict[str, str | None] = {"TMPDIR": str(temp_root)}
    # Left alone: the dir of a live server (this test process, its real start time) and a
    # name no server of this kind makes. Removed: our pid with another start time (reused).
    live = temp_root / f"{_tempdir.private_dir_prefix()}live"
    foreign = temp_root / "exec-sandbox-abc123"
    reused_pid = temp_root / f"exec-sandbox-{os.getpid()}.1-reused"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    script = 'for i in 1 2 3; do mkdir -p "$TMPDIR/sub$i/deeper"; done; echo "$TMPDIR"; exec sleep 60'
    with trio.fail_after(60):
        async with child_server(tmp_path / "first", env=env) as first:
            async with open_raw_client(first.url, first.token) as client:
                await client.initialize()
                started = await client.start("left", ["sh", "-c", script], sandbox=WORKSPACE_WRITE, cwd=str(tmp_path))
                left = Path((await client.wait_output("left", b"\n")).decode().split()[-1])
                watch = PidWatch(started["pid"])
                first.cli.process.kill()  # no drain, no cleanup
                await first.cli.process.wait()
                os.kill(started["pid"], signal.SIGKILL)  # its command, nobody's child now
                await watch.wait_exited()
        assert left.is_dir() and left.parent == temp_root
        for directory in (live, foreign, reused_pid):
            directory.mkdir()
            (directory / "file").touch()
        async with child_server(tmp_path / "second", env=env) as second:
            await second.cli.wait_stderr(b"removed 2 stale private temp dir(s)")
            assert second.alive
    assert not left.exists() and not reused_pid.exists()
    assert live.is_dir() and foreign.is_dir()


def test_removal_follows_no_symlink_and_opens_locked_dirs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    tree = tmp_path / "tree"
    deep = tree
    for _ in range(3 * _tempdir.MAX_OPEN_LEVELS):  # deeper than the fds it may hold
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "link-to-outside").symlink_to(outside)
    (tree / "link-to-file").symlink_to(outside / "precious")
    locked = tree / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "file").touch()
    (locked / "inner").chmod(0)
    locked.chmod(0o500)
    assert _tempdir.remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "precious").read_text() == "keep"


def test_removal_gives_up_at_its_deadline_without_raising(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    assert not _tempdir.remove_tree(str(tree), seconds=-1.0)
    assert _tempdir.remove_tree(str(tree))
    assert _tempdir.remove_tree(str(tree))  # gone already: still true
