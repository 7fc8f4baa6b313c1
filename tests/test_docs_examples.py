"""The examples in README.md and docs/priors.md run / validate as written."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from priorguard.experiments import ExperimentSpec
from priorguard.priors import SpecError

ROOT = Path(__file__).resolve().parents[1]


def blocks(path, lang):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


def test_readme_python_example_runs():
    code = blocks("README.md", "python")[0]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "'terminal.features': ['agent_x']" in r.stdout and "'terminal.features': ['coin_dx']" in r.stdout


def test_readme_shows_exactly_two_fresh_machine_commands():
    section = (ROOT / "README.md").read_text().split("## On a fresh machine", 1)[1].split("##", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_priors_doc_full_example_validates():
    first = blocks("docs/priors.md", "toml")[0]
    spec = ExperimentSpec.from_toml(first)
    assert spec.world.speed.max_depth == 3


@pytest.mark.parametrize("snippet", blocks("docs/priors.md", "toml")[1:])
def test_priors_doc_snippets_are_valid_toml(snippet):
    tomllib.loads(snippet)


def test_priors_doc_error_lines_are_what_the_code_says():
    text = (ROOT / "docs" / "priors.md").read_text()
    base = tomllib.loads(blocks("docs/priors.md", "toml")[0])
    base["terminal"]["kernel"]["lengthscale"] = {"dist": "LogNormal", "loc": 0.0, "scale": -1.0}
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(base)
    assert str(info.value.issues[0]) in text
