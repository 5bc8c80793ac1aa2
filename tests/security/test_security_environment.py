"""Nothing of the server reaches a command: not its token, its secrets, nor its open files."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from rawclient import no_leftover_processes, open_raw_client, output_of  # noqa: F401  (fixture used by name)
from security_support import child_server

SECRET_VARS: Final = ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "MY_API_KEY", "gcp_credentials")
POLICIES: Final[dict[str, Any]] = {"sandboxed": {"mode": "workspaceWrite"}, "unsandboxed": {"mode": "none"}}


@pytest.mark.parametrize("policy", sorted(POLICIES))
async def test_a_command_sees_neither_the_token_nor_secret_looking_variables(
    tmp_path: Path, policy: str, no_leftover_processes: None
) -> None:
    planted = {name: secrets.token_hex(8) for name in SECRET_VARS}
    env: dict[str, str | None] = {**planted, "EXEC_SERVER_LOG_SOMETHING": "server-only", "HARMLESS_VAR": "kept"}
    with trio.fail_after(30):
        async with child_server(tmp_path, "--allow-unsandboxed", env=env, token_in_env=True) as server:
            async with open_raw_client(server.url, server.token) as client:
                await client.initialize()
                sandbox = POLICIES[policy]
                events = await client.run("env", ["env"], sandbox=sandbox, cwd=str(tmp_path))
                seen = output_of(events).decode()
                assert server.token not in seen
                for name, value in planted.items():
                    assert value not in seen and f"{name}=" not in seen, name
                assert "EXEC_SERVER_LOG_SOMETHING" not in seen
                assert "HARMLESS_VAR=kept" in seen  # inheritEnv keeps its meaning otherwise
                # A name the request sets explicitly wins over the default exclusion.
                explicit = {"GITHUB_TOKEN": "given", "EXEC_SERVER_TOKEN": "also-given"}
                events = await client.run("env2", ["env"], sandbox=sandbox, cwd=str(tmp_path), env=explicit)
                seen = output_of(events).decode()
                assert "GITHUB_TOKEN=given" in seen and "EXEC_SERVER_TOKEN=also-given" in seen
                assert server.token not in seen and planted["AWS_SECRET_ACCESS_KEY"] not in seen


@pytest.mark.parametrize("policy", sorted(POLICIES))
async def test_a_command_holds_only_its_three_standard_descriptors(
    tmp_path: Path, policy: str, no_leftover_processes: None
) -> None:
    # The shell's own descriptors, probed with its builtin `test` (no listing fd of its own;
    # /proc/self, not /proc/$$: an unsandboxed command's $$ is its PID-namespace pid).
    script = "for n in $(seq 0 255); do [ -e /proc/self/fd/$n ] && echo $n; done; true"
    with trio.fail_after(30):
        async with child_server(tmp_path, "--allow-unsandboxed") as server:
            async with open_raw_client(server.url, server.token) as client:
                await client.initialize()
                events = await client.run(
                    "fds", ["sh", "-c", script], sandbox=POLICIES[policy], cwd=str(tmp_path), pipeStdin=True
                )
                fds = sorted(int(line) for line in output_of(events).split())
                assert fds == [0, 1, 2], fds
