"""Build and runtime configuration: what ``fastfire.show_config()`` prints."""

import platform
import sys

from fastfire._core._openmp import effective_n_threads, openmp_enabled, usable_cpu_count
from fastfire._version import __version__


def get_config():
    """Return fastfire's build and runtime configuration as a dict.

    Returns
    -------
    config : dict
        Keys ``version``, ``python``, ``platform``, ``openmp``, ``usable_cores``,
        ``threads`` (the effective thread count for ``n_jobs=None``) and ``blas``
        (one dict per BLAS library that threadpoolctl finds loaded).
    """
    import numpy  # noqa: F401  (loads numpy's BLAS so threadpoolctl can see it)
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS, the one the kernels call)
    from threadpoolctl import threadpool_info

    blas = [
        {
            "library": info.get("internal_api"),
            "version": info.get("version"),
            "threading_layer": info.get("threading_layer"),
            "num_threads": info.get("num_threads"),
            "filepath": info.get("filepath"),
        }
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "openmp": openmp_enabled(),
        "usable_cores": usable_cpu_count(),
        "threads": effective_n_threads(None),
        "blas": blas,
    }


def show_config(file=None):
    """Print fastfire's version, OpenMP status, effective thread count and BLAS libraries.

    Parameters
    ----------
    file : file-like, default=None
        Where to print; ``sys.stdout`` when None.

    Examples
    --------
    >>> import fastfire
    >>> fastfire.show_config()  # doctest: +SKIP
    fastfire 0.1.0
    ...
    """
    config = get_config()
    lines = [
        f"fastfire {config['version']}",
        f"python: {config['python']} ({config['platform']})",
        f"OpenMP: {'enabled' if config['openmp'] else 'DISABLED (serial build)'}",
        f"usable cores: {config['usable_cores']}",
        f"threads (n_jobs=None): {config['threads']}",
    ]
    if not config["blas"]:
        lines.append("BLAS: none found by threadpoolctl")
    for blas in config["blas"]:
        lines.append(
            f"BLAS: {blas['library']} {blas['version']} ({blas['threading_layer']}, "
            f"{blas['num_threads']} threads) {blas['filepath']}"
        )
    print("\n".join(lines), file=file or sys.stdout)
