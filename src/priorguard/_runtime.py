"""Process-wide JAX set-up, done once at an entry point (CLI, sweep worker), never on import."""

from __future__ import annotations

import os
from pathlib import Path

_DONE = False
#: Whether this process is a sweep worker (a pool or Ray worker: :func:`configure` with ``worker=True``).
WORKER = False

#: PYTHONHASHSEED of every process that runs experiments. Some libraries build
#: programs by iterating over sets of site names (numpyro's ELBO does), so with
#: Python's per-process string hashing the same model lowers to a different
#: program in each process: the persistent compilation cache never hits and
#: sums are taken in a different order. A fixed seed makes both repeatable.
HASH_SEED = "0"


def fix_hash_seed_for_children() -> None:
    """Sets ``PYTHONHASHSEED`` (when unset) for processes started from here on (sweep workers, Ray)."""
    os.environ.setdefault("PYTHONHASHSEED", HASH_SEED)


def hash_seed_is_fixed() -> bool:
    """Whether this interpreter started with a fixed ``PYTHONHASHSEED``."""
    import sys

    return sys.flags.hash_randomization == 0 or os.environ.get("PYTHONHASHSEED", "random") != "random"


#: BLAS thread-count variables: one thread each, unless the user set them. OpenBLAS
#: (numpy's, and scipy's, whose LAPACK jaxlib's CPU linear algebra calls) splits a
#: factorisation by its thread count, and that changes the rounding: the same spec and
#: seed gave different metrics in `priorguard run` (2 BLAS threads) and in a sweep
#: worker (1). The matrices here (GPs of <= 512 points) gain nothing from more threads.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads() -> None:
    """One BLAS thread in this process and the ones it starts (variables the user set are kept)."""
    unset = [var for var in BLAS_THREAD_VARS if var not in os.environ]
    for var in unset:
        os.environ[var] = "1"
    if len(unset) == len(BLAS_THREAD_VARS):  # libraries loaded already read no variable: limit them now
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure(*, host_devices: int | None = None, cache_dir: str | Path | None = None, worker: bool = False) -> None:
    """Sets float64, the host device count, the persistent compilation cache and one BLAS thread.

    Must run before JAX is first used for the device count to take effect
    (numpyro's parallel chains need one host device per chain).

    Args:
        host_devices: number of CPU devices to expose (default: CPU count, at most 8).
        cache_dir: persistent compilation cache folder (default
            ``$PRIORGUARD_CACHE`` or ``~/.cache/priorguard/jax``); programs go
            into its subfolder ``cpus-<n>``, n the CPUs this process may run on.
        worker: this process is a sweep worker (:data:`WORKER`): between runs it keeps at most
            :data:`RETAIN_BYTES` of compiled programs.
    """
    global _DONE, WORKER
    WORKER = WORKER or worker
    if _DONE:
        return
    limit_blas_threads()
    n = host_devices or min(os.cpu_count() or 1, 8)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        use_compilation_cache(cache_dir)
    except OSError as exc:  # a read-only home: run on, without the persistent cache
        import warnings

        warnings.warn(f"persistent compilation cache disabled: cannot create {cache_folder(cache_dir)} "
                      f"({exc.strerror}); set PRIORGUARD_CACHE to a writable folder to reuse compiled "
                      "programs across runs", RuntimeWarning, stacklevel=2)
    _DONE = True


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """The persistent compilation cache folder of this process (see :func:`configure`)."""
    base = Path(cache_dir or os.environ.get("PRIORGUARD_CACHE", Path.home() / ".cache" / "priorguard" / "jax"))
    # XLA:CPU splits a program over the threads the compiling process may use, and the
    # persistent cache key does not say how many: a program compiled in a sweep worker
    # pinned to one core runs on one thread in any process that loads it (a flagship run
    # took 20 s instead of 13 s). So processes with different CPU counts keep apart.
    return base / f"cpus-{cpu_count()}"


def use_compilation_cache(cache_dir: str | Path | None = None) -> Path:
    """Points JAX's persistent compilation cache at :func:`cache_folder` (raises OSError if it cannot be made)."""
    import jax

    cache = cache_folder(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs add up
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache


#: Share of the kernel's memory-map limit (``vm.max_map_count``) a process may hold
#: before :func:`release_compiled_programs` drops JAX's in-memory programs.
MAP_SHARE = 0.8


def memory_maps() -> tuple[int, int] | None:
    """(memory mappings this process holds, the kernel's limit), or None where ``/proc`` does not say."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return None
    return used, limit


def release_compiled_programs(share: float = MAP_SHARE, *, retain_bytes: int | None = None) -> bool:
    """Drops JAX's in-memory compiled programs once this process holds ``share`` of its memory maps
    (or, with ``retain_bytes``, more resident memory than that).

    Every program XLA:CPU compiles and keeps loaded holds about ten memory
    mappings of its own, and nothing drops a program while its function lives
    (ours live in module-level caches). A process that compiles thousands of
    programs (a long sweep worker; a test worker) reaches the kernel's limit
    (``vm.max_map_count``, 65530 by default), and the next compile crashes
    inside XLA with a segmentation fault, whatever it compiles. The programs
    also hold memory: after one assistant run, 1.1 of the 1.75 GB a process kept.
    Dropping them frees both; the next call of a function reloads its program
    from the persistent compilation cache. Returns whether it dropped them.
    """
    maps = memory_maps()
    over_maps = maps is not None and maps[0] >= share * maps[1]
    resident = resident_bytes() if retain_bytes is not None else None
    if not over_maps and (resident is None or resident <= retain_bytes):
        return False
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
    return True


#: Resident memory a sweep worker keeps between runs: above it, it drops its compiled programs
#: (see :func:`release_compiled_programs`), so that the next run starts from about 0.6 GB instead
#: of adding its own footprint to the programs of every run before it. The price: the next run
#: traces its programs again and loads them from the persistent cache (a sweep of the assistant:
#: 2.2 GB per worker and 133-139 s, against 3.0 GB and 109-110 s keeping every program).
RETAIN_BYTES = 1 << 30


def resident_bytes() -> int | None:
    """This process's resident memory in bytes, or None where ``/proc`` does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def return_free_memory() -> bool:
    """Hands the C heap's free pages back to the system (glibc's ``malloc_trim``); whether it could.

    An array freed by XLA or NumPy stays in the process's heap: glibc raises its
    mmap threshold as large blocks come and go, so later large arrays are carved
    from the heap, and the heap keeps what they free for reuse instead of
    returning it. A process that runs one thing after another (a sweep worker, a
    test worker) then holds its largest footprint so far for good: a finished
    assistant run held 1.72 GB resident, of which ``malloc_trim`` returned 1.11 GB.
    Costs milliseconds; a no-op (False) where the C library has no ``malloc_trim``.
    """
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
