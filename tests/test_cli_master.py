"""The CLI's control master (``exec_client/_control.py``): what only a shared, persisting
client can get wrong — whose calls it takes, how it ends, and what a caller that dies or
outlives it sees. (``tests/test_cli.py`` runs every real-server CLI test through one too.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from nspid import descendant_running
from test_cli import cli_env, control_master, exec_client, listening, one_line
from test_sandbox_view import IS_ROOT, TEST_USER, _copy_for_the_test_user


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A short XDG_RUNTIME_DIR (a unix socket's path has at most 107 bytes; pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="xc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def master_env(runtime: Path, server: Any, persist: str = "60") -> dict[str, str]:
    return {
        "XDG_RUNTIME_DIR": str(runtime),
        "EXEC_CLIENT_CONTROL_PERSIST": persist,
        "EXEC_SERVER_URL": server.url,
        "EXEC_SERVER_TOKEN": server.token,
    }


async def gone(pid: int) -> None:
    """Until ``pid`` has exited (a zombie counts: its parent is not ours to wait for)."""
    while Path(f"/proc/{pid}").exists():
        try:
            if "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
                return
        except FileNotFoundError:
            return
        await trio.sleep(0.02)


async def test_calls_after_the_first_share_the_masters_session(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    with trio.fail_after(60):
        async with control_master(server.url, server.token, env, tmp_path) as pid:
            records = []
            for _ in range(3):
                done = await exec_client(["run", "--json", "--", "sh", "-c", "echo hi; exit 3"], env=env, home=tmp_path)
                assert done.returncode == 3, done.stderr
                records.append(json.loads(done.stdout))
            assert Path(f"/proc/{pid}").exists()  # the calls returned, their pipes closed, while it runs
    assert len({record["sessionId"] for record in records}) == 1
    assert [(r["stdout"], r["completion"], r["readCalls"]) for r in records] == [("hi\n", "pushed", 0)] * 3


async def test_its_directory_and_socket_are_ours_alone(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    with trio.fail_after(60):
        async with control_master(server.url, server.token, env, tmp_path):
            directory = runtime / "exec-client"
            (sock,) = directory.glob("*.sock")
            assert (directory.stat().st_mode & 0o777, sock.stat().st_mode & 0o777) == (0o700, 0o600)


async def test_a_directory_others_can_enter_is_not_used(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    directory = runtime / "exec-client"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with trio.fail_after(60):
        done = await exec_client(["run", "--", "echo", "ok"], env=env, home=tmp_path)
    assert (done.returncode, done.stdout) == (0, b"ok\n")
    assert list(directory.iterdir()) == []  # no master started there


async def test_another_token_does_not_ride_the_masters_session(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    with trio.fail_after(60):
        async with control_master(server.url, server.token, env, tmp_path):
            wrong = await exec_client(["run", "--", "true"], env={**env, "EXEC_SERVER_TOKEN": "x" * 40}, home=tmp_path)
    assert wrong.returncode == 255
    assert "401" in one_line(wrong.stderr) or "token" in one_line(wrong.stderr)


_CALL_AS_ROOT = """
import sys
from exec_client._control import ControlAddress, call_master
print(call_master(ControlAddress(sys.argv[1], sys.argv[2]), {"argv": ["run", "--", "true"]}))
"""


@pytest.mark.skipif(not IS_ROOT or shutil.which("runuser") is None, reason="needs root to run a master as the test user")
async def test_a_master_serves_only_callers_of_its_own_uid(server: Any, tmp_path: Path, runtime: Path) -> None:
    # Root passes any file permission: the master's own check (SO_PEERCRED) must refuse it.
    home = Path(f"/home/{TEST_USER}") / f"master-{os.getpid()}"
    home.mkdir(mode=0o700)
    shutil.chown(home, TEST_USER, TEST_USER)
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    shutil.chown(runtime, TEST_USER, TEST_USER)
    site = _copy_for_the_test_user(home)
    env = [f"PYTHONPATH={site}", f"HOME={home}", f"XDG_RUNTIME_DIR={runtime}", "EXEC_CLIENT_CONTROL_PERSIST=60"]
    env += [f"EXEC_SERVER_URL={server.url}", f"EXEC_SERVER_TOKEN={server.token}"]
    as_tester = ["runuser", "-u", TEST_USER, "--", "env", *env, "/usr/bin/python3", "-m", "exec_client"]
    try:
        with trio.fail_after(60):
            first = await trio.run_process([*as_tester, "run", "--", "true"], capture_stdout=True, capture_stderr=True, check=False, cwd="/")
            assert first.returncode == 0, first.stderr
            directory = runtime / "exec-client"
            while not list(directory.glob("*.sock")):
                await trio.sleep(0.02)
            (sock,) = directory.glob("*.sock")
            (lock,) = directory.glob("*.lock")
            pid = int(lock.read_text())
            try:
                asked = await trio.run_process(
                    [sys.executable, "-c", _CALL_AS_ROOT, str(sock), str(lock)], env=cli_env({}, tmp_path), capture_stdout=True
                )
                assert asked.stdout == b"None\n"  # not taken: the caller would run the command itself
            finally:
                stop = await trio.run_process([*as_tester, "control", "stop"], capture_stderr=True, check=False, cwd="/")
                assert stop.returncode == 0, stop.stderr
                await gone(pid)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(site, ignore_errors=True)


async def first_call_starts_a_master(env: dict[str, str], home: Path, directory: Path) -> int:
    """Make the first call, as a user would; the pid of the master it started (from its lock,
    which it writes before it listens, and which stays after it ends)."""
    first = await exec_client(["run", "--", "true"], env=env, home=home)
    assert first.returncode == 0, first.stderr
    while not (locks := list(directory.glob("*.lock"))) or not locks[0].read_text().strip():
        await trio.sleep(0.02)
    return int(locks[0].read_text())


async def test_an_idle_master_ends_by_itself(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server, persist="0.5")
    directory = runtime / "exec-client"
    with trio.fail_after(60):
        await gone(await first_call_starts_a_master(env, tmp_path, directory))
    assert list(directory.glob("*.sock")) == []


async def test_a_dead_masters_socket_is_replaced(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    directory = runtime / "exec-client"
    with trio.fail_after(60):
        old = await first_call_starts_a_master(env, tmp_path, directory)
        while not any(map(listening, directory.glob("*.sock"))):
            await trio.sleep(0.02)
        os.kill(old, signal.SIGKILL)
        await gone(old)
        assert list(directory.glob("*.sock"))  # left behind
        # The next call finds nobody there, runs on its own and starts a new master.
        async with control_master(server.url, server.token, env, tmp_path) as new:
            assert new != old
            done = await exec_client(["run", "--", "echo", "ok"], env=env, home=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"ok\n", b"")


async def test_interrupt_and_a_killed_caller_reach_the_command(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    with trio.fail_after(60):
        async with control_master(server.url, server.token, env, tmp_path):
            for how, expected in (("interrupt", 128 + signal.SIGINT), ("kill", -signal.SIGKILL)):
                sleeper = ("sleep", f"{1000 + len(how)}{os.getpid()}")
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "exec_client", "run", "-n", "--", *sleeper], env=cli_env(env, tmp_path)
                )
                while (remote := descendant_running(*sleeper)) is None:
                    await trio.sleep(0.02)
                process.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)
                assert await process.wait() == expected
                await gone(remote)  # interrupted, or hung up when its caller vanished


async def test_control_stop_without_a_master_says_so(server: Any, tmp_path: Path, runtime: Path) -> None:
    with trio.fail_after(30):
        done = await exec_client(["control", "stop"], env=master_env(runtime, server), home=tmp_path)
    assert done.returncode == 1
    assert one_line(done.stderr) == f"exec-client: no control master for {server.url}"


async def test_persist_zero_neither_uses_nor_starts_a_master(server: Any, tmp_path: Path, runtime: Path) -> None:
    env = master_env(runtime, server)
    with trio.fail_after(60):
        async with control_master(server.url, server.token, env, tmp_path):
            first = await exec_client(["run", "--json", "--", "true"], env=env, home=tmp_path)
            own = await exec_client(["run", "--json", "--control-persist", "0", "--", "true"], env=env, home=tmp_path)
    assert json.loads(first.stdout)["sessionId"] != json.loads(own.stdout)["sessionId"]
