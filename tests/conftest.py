"""Test-wide setup: float64 (GP numerics) and a persistent compilation cache."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402

from priorguard._runtime import fix_hash_seed_for_children, use_compilation_cache  # noqa: E402

# The same persistent compilation cache as the CLI's processes: test workers, the CLI runs the
# tests start and later tests (after compiled programs are released) load a program compiled
# once instead of compiling it again. Tests of cold starts name their own cache folders. A fixed
# hash seed for the workers (started after this runs) makes numpyro's programs repeatable.
fix_hash_seed_for_children()
try:
    use_compilation_cache()
except OSError:  # a read-only home: tests compile everything themselves
    pass

#: Test files that run the CLI (or a sweep) end to end in subprocesses: marked ``e2e``, run by
#: default and in CI; ``pytest -m "not e2e"`` leaves them out for a quick pass.
E2E_FILES = {
    "cli/test_cli_basic.py", "cli/test_prior_check.py", "cli/test_shipped_experiments.py", "cli/test_tutorial.py",
    "experiments/test_ray_backend.py", "experiments/test_sweep_kill_real.py", "experiments/test_sweep_store.py",
    "golden/test_golden.py",
}


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """A test worker compiles thousands of programs: past the kernel's memory-map limit the next compile segfaults.
    It also hands back the heap's free pages, so that it holds what the next test needs, not the largest test's."""
    yield
    from priorguard._runtime import release_compiled_programs, return_free_memory

    release_compiled_programs()
    return_free_memory()


def pytest_collection_modifyitems(config, items):
    root = config.rootpath / "tests"
    for item in items:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if path in E2E_FILES:
            item.add_marker(pytest.mark.e2e)
