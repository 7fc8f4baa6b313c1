"""Golden metrics of `priorguard run`: every metric but timings, per shipped experiment.

The redesign moved code without changing behaviour; these files pin what every shipped
experiment computes so that a move which changes a number fails a test
(tests/cli/test_golden.py). Record them again only for a behaviour change made on
purpose, in its own commit that says why:

    python tests/golden/record.py            # tiny sizes (what CI checks)
    python tests/golden/record.py --full     # the shipped sizes (minutes; checked by `pytest -m slow`)
    python tests/golden/record.py --check [--full] [names...]   # compare, write nothing
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_sizes import tiny_args  # noqa: E402

SHIPPED = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))
#: (experiment, seed) pairs: each shipped experiment at seed 0, the flagship at seeds 0 and 1.
CASES = [(name, 0) for name in SHIPPED] + [("coin-shift", 1)]
TIMING_SUFFIX = "_s"
#: Floats agree to this relative tolerance (last-bit differences between CPU micro-architectures;
#: on the machine that recorded the files the numbers repeat exactly); everything else exactly.
RTOL = 1e-9


def golden_path(size: str, name: str, seed: int) -> Path:
    return HERE / size / f"{name}-seed{seed}.json"


def golden_metrics(size: str, name: str, seed: int) -> dict:
    """The recorded metrics of ``name`` at ``seed`` (``size``: "tiny" or "full")."""
    return json.loads(golden_path(size, name, seed).read_text())


def differences(expected: dict, got: dict) -> list[str]:
    """Keys whose values differ (beyond ``RTOL`` for floats), or that only one side has."""
    out = [f"{k}: missing" for k in expected if k not in got] + [f"{k}: new" for k in got if k not in expected]
    for key in sorted(set(expected) & set(got)):
        a, b = expected[key], got[key]
        if isinstance(a, float) and isinstance(b, (int, float)):
            same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12)
        else:
            same = a == b
        if not same:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def run_metrics(name: str, seed: int, *, full: bool, out: Path) -> dict:
    """Runs the first sweep point of ``name`` at ``seed`` through the CLI; its metrics without timings."""
    extra = [] if full else tiny_args(name)
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "run", name, "--out", str(out), "--seed",
                        str(seed), *extra], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed:\n{r.stderr[-3000:]}")
    (folder,) = list((out / "runs").iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.endswith(TIMING_SUFFIX)}


def main() -> None:
    full, check = "--full" in sys.argv, "--check" in sys.argv
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    size = "full" if full else "tiny"
    failed = False
    for name, seed in CASES:
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_metrics(name, seed, full=full, out=Path(tmp))
        path = golden_path(size, name, seed)
        if check:
            diff = differences(golden_metrics(size, name, seed), metrics)
            failed |= bool(diff)
            print(f"{name} seed {seed} ({size}): " + ("same" if not diff else "CHANGED\n  " + "\n  ".join(diff)),
                  flush=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(ROOT)}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
