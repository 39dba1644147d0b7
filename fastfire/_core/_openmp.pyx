"""OpenMP status and the number of threads a kernel should use."""

import numbers
import os

from fastfire._core._openmp cimport FASTFIRE_OPENMP_ENABLED, omp_get_max_threads


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
