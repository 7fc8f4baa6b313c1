"""Process-wide JAX set-up: dropping compiled programs before the memory-map limit."""

import sys

import jax
import jax.numpy as jnp
import pytest

from priorguard._runtime import memory_maps, release_compiled_programs

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
def test_compiled_programs_hold_memory_maps_until_released_and_come_back_when_called():
    release_compiled_programs(share=0.0)
    before, limit = memory_maps()
    assert limit > 0
    functions = [jax.jit(lambda x, i=i: jnp.sin(x) * i + (x @ x.T).sum()) for i in range(40)]
    values = [f(jnp.ones((i + 2, 3))) for i, f in enumerate(functions)]
    loaded, _ = memory_maps()
    assert loaded - before > 100  # about ten mappings per loaded program
    assert not release_compiled_programs(share=1.0)  # far below the limit: kept
    assert memory_maps()[0] >= loaded - 5
    assert release_compiled_programs(share=0.0)
    assert memory_maps()[0] < loaded - 100
    # a function whose program was dropped compiles (or loads) it again, same numbers
    assert jnp.array_equal(functions[7](jnp.ones((9, 3))), values[7])


def test_a_run_without_float64_is_refused_with_what_to_call():
    import subprocess

    code = "import priorguard as pg\nspec = pg.load_spec('coin-shift')\npg.run_experiment(spec.expand()[0][1], 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "priorguard.configure()" in r.stderr
    ok = subprocess.run([sys.executable, "-c", "import priorguard as pg\npg.configure()\nimport jax\n"
                         "print(jax.config.jax_enable_x64)"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() == "True"
