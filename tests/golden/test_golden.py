"""What every shipped experiment computes is pinned: golden metrics of `priorguard run`.

The files under tiny/ and full/ were written by record.py (beside this file): before the
redesign moved any code (which then left every number as it was), and again for the
closed-loop veto calibration, a behaviour change on purpose. Any such change records them
again in its own commit, saying why. tests/cli/test_shipped_experiments.py compares each experiment's tiny run at
seed 0 (the run it makes anyway); here the flagship's second seed, and every shipped size
behind the ``slow`` marker.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import CASES, differences, golden_metrics, run_metrics  # noqa: E402


def test_differences_sees_a_changed_number():
    assert differences({"a": 1.0, "b": "x"}, {"a": 1.0, "b": "x"}) == []
    assert differences({"a": 1.0}, {"a": 1.0 + 1e-6}) == ["a: 1.0 -> 1.000001"]
    assert differences({"a": float("nan")}, {"a": float("nan")}) == []
    assert differences({"a": 1, "c": None}, {"b": 1, "c": None}) == ["a: missing", "b: new"]
    assert differences({"a": None}, {"a": 0.0}) == ["a: None -> 0.0"]


def check(size: str, name: str, seed: int) -> None:
    expected = golden_metrics(size, name, seed)
    with tempfile.TemporaryDirectory() as tmp:
        got = run_metrics(name, seed, full=size == "full", out=Path(tmp))
    diff = differences(expected, got)
    assert not diff, f"{name} seed {seed} ({size}) changed:\n" + "\n".join(diff)


@pytest.mark.e2e
def test_the_flagships_second_seed_matches_its_golden_metrics():
    check("tiny", "coin-shift", 1)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "seed"), CASES, ids=[f"{n}-seed{s}" for n, s in CASES])
def test_shipped_runs_match_their_golden_metrics(name, seed):
    check("full", name, seed)
