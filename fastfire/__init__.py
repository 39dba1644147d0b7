"""fastfire: train wide neural networks faster on CPUs by computing only what matters.

Public names only; see ``fastfire.show_config()`` for the build configuration.
"""

from fastfire._config import get_config, show_config
from fastfire._core._openmp import effective_n_threads, openmp_enabled
from fastfire._version import __version__
from fastfire.estimators import MLPClassifier, MLPRegressor
from fastfire.estimators.convnet import ConvNetClassifier
from fastfire.estimators.shifted_relu import ShiftedReLUClassifier, ShiftedReLURegressor
from fastfire.nn.conv import ConvSampling
from fastfire.nn.corrtree import CorrelationTree
from fastfire.nn.lsh import LSH, SparseInput
from fastfire.nn.sampling import ColumnRowSampling
from fastfire.nn.selectors import Dense, Selector
from fastfire.nn.threshold import Threshold
from fastfire.persistence import load, save

__all__ = [
    "__version__",
    "ColumnRowSampling",
    "ConvNetClassifier",
    "ConvSampling",
    "CorrelationTree",
    "Dense",
    "LSH",
    "MLPClassifier",
    "MLPRegressor",
    "Selector",
    "ShiftedReLUClassifier",
    "ShiftedReLURegressor",
    "SparseInput",
    "Threshold",
    "effective_n_threads",
    "get_config",
    "load",
    "openmp_enabled",
    "save",
    "show_config",
]
