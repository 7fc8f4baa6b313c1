"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and the check can fail.

priors <- models <- planners <- analysis <- experiments <- cli; envs and the ground floor
import nothing above them; no two sibling modules import each other, even indirectly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "priorguard"


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """Runs import-linter with the project's contracts over the package under ``src``."""
    code = ("import sys; from importlinter.cli import lint_imports_command as c;"
            f" sys.path.insert(0, {str(src)!r}); c(['{ROOT / 'pyproject.toml'}', '--no-cache'])")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=src, env={"PYTHONPATH": str(src), "PATH": ""})


def test_the_package_keeps_its_import_contracts():
    r = lint_imports(PACKAGE.parent)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and "4 kept, 0 broken" in r.stdout


def test_an_upward_import_and_a_cycle_break_the_contracts(tmp_path):
    copy = tmp_path / "src" / "priorguard"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "priors" / "errors.py").open("a") as f:  # the bottom layer reaching the top
        f.write("\nfrom priorguard.experiments import spec as _upward  # noqa\n")
    with (copy / "store.py").open("a") as f:  # the ground floor importing a layer above it
        f.write("\nimport priorguard.analysis.diagnostics  # noqa\n")
    r = lint_imports(copy.parent)
    assert r.returncode != 0
    assert "priorguard.priors.errors -> priorguard.experiments.spec" in r.stdout
    assert "The ground floor imports nothing of priorguard BROKEN" in r.stdout
