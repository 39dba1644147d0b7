"""OpenMP status, the number of threads a kernel should use, and the threads' handling of
subnormal floats."""

import numbers
import os
from contextlib import contextmanager

from cython.parallel cimport parallel

from fastfire._core._openmp cimport FASTFIRE_OPENMP_ENABLED, omp_get_max_threads

# Whether the calling thread flushes subnormal floats to zero: FTZ (results) and DAZ (inputs)
# in the x86 MXCSR, FZ in the AArch64 FPCR. Elsewhere the switch does nothing.
cdef extern from *:
    """
    #if defined(__x86_64__) || defined(_M_X64) || defined(__SSE2__)
    #include <xmmintrin.h>
    #define FF_FTZ_DAZ 0x8040u
    static inline int ff_flush_get(void) { return (_mm_getcsr() & FF_FTZ_DAZ) == FF_FTZ_DAZ; }
    static inline void ff_flush_set(int on) {
        unsigned csr = _mm_getcsr() & ~FF_FTZ_DAZ;
        _mm_setcsr(on ? csr | FF_FTZ_DAZ : csr);
    }
    #elif defined(__aarch64__)
    #include <stdint.h>
    static inline int ff_flush_get(void) {
        uint64_t r;
        __asm__ volatile("mrs %0, fpcr" : "=r"(r));
        return (int) ((r >> 24) & 1u);
    }
    static inline void ff_flush_set(int on) {
        uint64_t r;
        __asm__ volatile("mrs %0, fpcr" : "=r"(r));
        r = on ? r | (1ull << 24) : r & ~(1ull << 24);
        __asm__ volatile("msr fpcr, %0" : : "r"(r));
    }
    #else
    static inline int ff_flush_get(void) { return 0; }
    static inline void ff_flush_set(int on) { (void) on; }
    #endif
    """
    bint ff_flush_get() noexcept nogil
    void ff_flush_set(bint on) noexcept nogil


def openmp_enabled():
    """Return True when the kernels were compiled with OpenMP."""
    return bool(FASTFIRE_OPENMP_ENABLED)


def _cgroup_cpu_limit():
    """CPU quota of the current cgroup (v2 or v1), or None when unlimited/unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, quota // period)
    except (OSError, ValueError):
        pass
    return None


def usable_cpu_count():
    """Number of cores this process may use: affinity mask and cgroup quota considered."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, limit)
    return max(1, count)


def effective_n_threads(n_jobs=None):
    """Resolve an ``n_jobs`` parameter to the number of threads kernels will use.

    Parameters
    ----------
    n_jobs : int or None, default=None
        ``None``: ``OMP_NUM_THREADS`` if set, else the usable cores. ``-1``: all usable
        cores; ``-2``: all but one, and so on. ``k > 0``: ``k`` threads.

    Returns
    -------
    n_threads : int
        At least 1; always 1 in a build without OpenMP.
    """
    if n_jobs is not None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral):
            raise TypeError(f"n_jobs must be None or an int, got {n_jobs!r}.")
        n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use None, -1 or a positive int.")
    if not FASTFIRE_OPENMP_ENABLED:
        return 1
    cores = usable_cpu_count()
    if n_jobs is None:
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            return max(1, omp_get_max_threads())
        return cores
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return n_jobs


def denormals_flushed():
    """Return True when the calling thread flushes subnormal floats to zero.

    See :func:`flush_denormals`.
    """
    return bool(ff_flush_get())


def set_denormal_flush(bint flush, int n_threads=1):
    """Make the calling thread and an OpenMP team of ``n_threads`` flush subnormal floats.

    The flag is a per-thread register (the MXCSR's FTZ and DAZ bits on x86-64, FPCR.FZ on
    AArch64), so every thread of the team is set in a parallel region of that size; later
    regions of up to ``n_threads`` threads reuse the same threads.

    Parameters
    ----------
    flush : bool
        Flush (True) or keep (False) subnormal inputs and results.
    n_threads : int, default=1
        Size of the OpenMP team to set besides the calling thread.

    Returns
    -------
    previous : bool
        The calling thread's setting before the call.
    """
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}.")
    cdef bint previous = ff_flush_get()
    ff_flush_set(flush)
    if n_threads > 1:
        with nogil, parallel(num_threads=n_threads):
            ff_flush_set(flush)
    return bool(previous)


@contextmanager
def flush_denormals(n_threads=1):
    """Context manager: the calling thread and ``n_threads`` OpenMP threads flush subnormals.

    Training runs inside it. Float32 back-propagation through a confident network makes
    gradients below 1.2e-38 (subnormal floats); x86 cores compute with those through microcode,
    ten to a hundred times slower, and a trained CNN or MLP took about twice as long per epoch
    as an untrained one. Flushing them to zero (as TensorFlow and oneDNN do on CPUs) changes
    results only below that magnitude. The previous setting of the calling thread is restored
    on exit, on the team too.

    Parameters
    ----------
    n_threads : int, default=1
        Size of the OpenMP team the kernels inside will use.
    """
    previous = set_denormal_flush(True, n_threads)
    try:
        yield
    finally:
        set_denormal_flush(previous, n_threads)
