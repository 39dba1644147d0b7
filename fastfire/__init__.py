"""fastfire: train wide neural networks faster on CPUs by computing only what matters.

Public names only; see ``fastfire.show_config()`` for the build configuration.
"""

from fastfire._config import get_config, show_config
from fastfire._core._openmp import effective_n_threads, openmp_enabled
from fastfire._version import __version__

__all__ = [
    "__version__",
    "effective_n_threads",
    "get_config",
    "openmp_enabled",
    "show_config",
]
