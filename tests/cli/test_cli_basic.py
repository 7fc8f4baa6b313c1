"""The CLI through a subprocess: validate, list, schema; bad input exits 2 without a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "experiments" / "coin-shift.toml"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "priorguard.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_validate_shipped_spec():
    r = cli("validate", SHIPPED)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "9 run(s)" in r.stdout


def test_validate_by_name_with_show_round_trips(tmp_path):
    r = cli("validate", "coin-shift", "--show")
    assert r.returncode == 0, r.stderr
    shown = r.stdout.split("\n", 1)[1]
    (tmp_path / "again.toml").write_text(shown)
    assert cli("validate", tmp_path / "again.toml").returncode == 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('name = "x"\nenv = \n', "<toml>"),
        (SHIPPED.read_text().replace('scale = 1.0 }\nvariance', 'scale = -1.0 }\nvariance'),
         "terminal.kernel.lengthscale.scale: must be > 0, got -1.0"),
        (SHIPPED.read_text().replace('kind = "rbf"', 'kind = "rbff"'), "did you mean 'rbf'"),
    ],
)
def test_bad_spec_exits_2_with_path_and_no_traceback(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    r = cli("validate", path)
    assert r.returncode == 2
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_bad_override_exits_2():
    r = cli("validate", "coin-shift", "--set", "planner.veto.alhpa=0.1")
    assert r.returncode == 2 and "did you mean 'alpha'" in r.stderr and "Traceback" not in r.stderr
    r = cli("validate", "coin-shift", "--set", "nonsense")
    assert r.returncode == 2 and "path=value" in r.stderr


def test_missing_spec_exits_2():
    r = cli("validate", "coin-shfit")
    assert r.returncode == 2 and "did you mean 'coin-shift'" in r.stderr


def test_list_shows_kernels_distributions_envs_and_experiments():
    r = cli("list")
    assert r.returncode == 0, r.stderr
    for word in ("matern52", "LogNormal", "coin-shift", "priorguard/CoinShift-v1"):
        assert word in r.stdout
    bad = cli("list", "kernals")
    assert bad.returncode == 2 and "did you mean 'kernels'" in bad.stderr


def test_schema_command_matches_committed_schema(tmp_path):
    r = cli("schema", "--out", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((ROOT / "docs" / "spec.schema.json").read_text())


def test_unwritable_cache_warns_once_and_runs_on(tmp_path):
    """A cache folder that cannot be created disables the persistent cache with a warning, not an error."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = ("import warnings, jax\n"
            "warnings.simplefilter('always')\n"
            "from priorguard._runtime import configure\n"
            "configure(); configure()\n"
            "print(jax.numpy.ones(2).sum(), jax.config.jax_compilation_cache_dir)\n")
    import os

    env = dict(os.environ, PRIORGUARD_CACHE=str(blocker / "cache"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("persistent compilation cache disabled") == 1, r.stderr
    assert "PRIORGUARD_CACHE" in r.stderr
    assert r.stdout.split()[0] == "2.0" and str(blocker) not in r.stdout


def test_processes_with_different_cpu_counts_keep_separate_program_caches(tmp_path):
    """XLA:CPU bakes the thread count into a program; a 1-CPU sweep worker's programs must not reach others."""
    import os

    code = ("import os, sys\n"
            "if sys.argv[1] == 'pin': os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from priorguard._runtime import configure\n"
            "configure()\n"
            "import jax\n"
            "print(jax.config.jax_compilation_cache_dir)\n")
    env = dict(os.environ, PRIORGUARD_CACHE=str(tmp_path / "cache"))
    dirs = {}
    for mode in ("pin", "free"):
        r = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        dirs[mode] = r.stdout.strip()
    assert dirs["pin"] == str(tmp_path / "cache" / "cpus-1")
    assert dirs["free"] == str(tmp_path / "cache" / f"cpus-{len(os.sched_getaffinity(0))}")


def test_usage_names_the_command():
    # the console script re-executes itself as `python -m priorguard.cli`; usage still says `priorguard`
    script = Path(sys.executable).parent / "priorguard"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "priorguard.cli"]
    r = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Usage: priorguard [OPTIONS] COMMAND" in r.stdout, r.stdout[:300]


_BLAS_PROBE = """
import json, numpy, scipy.linalg, threadpoolctl
from priorguard._runtime import configure
configure()
print(json.dumps([p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]))
"""


def test_experiment_processes_use_one_blas_thread_unless_told_otherwise():
    # numpy and scipy load their BLAS before configure(): it limits them after the fact
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", _BLAS_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    threads = json.loads(r.stdout.strip().splitlines()[-1])
    assert threads and all(n == 1 for n in threads)
    if len(os.sched_getaffinity(0)) >= 2:  # a count the user set is kept
        r = subprocess.run([sys.executable, "-c", _BLAS_PROBE], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert 2 in json.loads(r.stdout.strip().splitlines()[-1])


def test_help_imports_neither_jax_nor_the_priors():
    """`priorguard --help` (and loading the CLI) stays light: JAX, numpyro and the spec's priors load
    only when a command needs them."""
    code = ("import sys, priorguard.cli; heavy = [m for m in ('jax', 'numpyro', 'equinox', 'priorguard.priors')"
            " if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_compare_refuses_what_it_cannot_compare(tmp_path):
    r = cli("compare", str(tmp_path))
    assert r.returncode == 2 and "not a result store" in r.stderr and "Traceback" not in r.stderr
    from priorguard.store import ResultStore

    ResultStore(tmp_path / "store")  # an empty store: no seed with two points
    for args, words in ((["--role", "wolrd"], "--role must be"), ([], "nothing to compare")):
        r = cli("compare", str(tmp_path / "store"), *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
