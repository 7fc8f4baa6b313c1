"""Process-wide JAX set-up: dropping compiled programs before the memory-map limit."""

import ctypes
import ctypes.util
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from priorguard._runtime import memory_maps, release_compiled_programs, resident_bytes, return_free_memory

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


@linux_only
def test_compiled_programs_are_dropped_when_the_process_holds_more_than_it_may_keep():
    functions = [jax.jit(lambda x, i=i: jnp.cos(x) * i) for i in range(5)]
    [f(jnp.ones(3)) for f in functions]
    held = resident_bytes()
    assert held is not None and held > 0
    assert not release_compiled_programs(share=1.0, retain_bytes=held * 4)  # room left: kept
    assert functions[0]._cache_size() == 1
    assert release_compiled_programs(share=1.0, retain_bytes=held // 4)
    assert functions[0]._cache_size() == 0


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@linux_only
def test_freed_heap_memory_goes_back_to_the_system():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc: no malloc_trim to call")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 3000  # 190 MB in blocks below the mmap threshold: carved from the heap
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # resident
    for b in blocks[::2]:  # every other block: a fragmented heap, which free() alone cannot shrink
        libc.free(b)
    held = _resident_bytes()
    assert return_free_memory()
    assert held - _resident_bytes() > 60 * 2**20, (held, _resident_bytes())  # of the 95 MB freed
    for b in blocks[1::2]:
        libc.free(b)


def test_a_run_without_float64_is_refused_with_what_to_call():
    import subprocess

    code = "import priorguard as pg\nspec = pg.load_spec('coin-shift')\npg.run_experiment(spec.expand()[0][1], 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "priorguard.configure()" in r.stderr
    ok = subprocess.run([sys.executable, "-c", "import priorguard as pg\npg.configure()\nimport jax\n"
                         "print(jax.config.jax_enable_x64)"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() == "True"
