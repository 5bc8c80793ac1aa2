"""Build hook: compile the sandbox launcher (exec_server/sandbox/launcher.c) with the package.

All metadata lives in pyproject.toml; this file only adds the compile step to ``build_py``,
so ``pip install .`` and ``pip install -e .`` both produce the launcher binary.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SANDBOX_DIR = Path("exec_server", "sandbox")


def _load_build_module():  # type: ignore[no-untyped-def]
    # By file path, not `import exec_server...`: the package __init__ imports trio and
    # attrs, which the isolated build environment does not have.
    spec = importlib.util.spec_from_file_location("_launcher_build", HERE / SANDBOX_DIR / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithLauncher(build_py):
    """``build_py`` that also compiles the launcher next to the package's modules."""

    def run(self) -> None:
        super().run()
        build = _load_build_module()
        # An editable install imports from the source tree, so the binary goes there
        # (it is in .gitignore); a regular build puts it into the wheel's tree.
        target_root = HERE if getattr(self, "editable_mode", False) else Path(self.build_lib)
        destination = target_root / SANDBOX_DIR / build.LAUNCHER_NAME
        build.compile_launcher(HERE / SANDBOX_DIR / build.SOURCE_NAME, destination)
        self.announce(f"compiled sandbox launcher -> {destination}", level=2)


setup(cmdclass={"build_py": BuildPyWithLauncher})
