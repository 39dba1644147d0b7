"""Dataset loaders and synthetic generators.

Readers for the Extreme Classification Repository text format (:func:`load_xc`, :func:`dump_xc`),
sparse multi-label ARFF as distributed with Mulan (:func:`load_arff`), svmlight (:func:`load_svmlight`)
and IDX (:func:`load_idx`); loaders for the real datasets (:func:`load_fashion_mnist`,
:func:`load_bibtex`, :func:`load_corel5k`), found through ``$FASTFIRE_DATA``; and
:func:`make_extreme_classification`, a fast synthetic extreme multi-label problem.

Every reader raises :class:`ValueError` naming the file and the 1-based line on malformed input.
"""

from fastfire.datasets._arff import load_arff
from fastfire.datasets._real import (
    get_data_home,
    load_bibtex,
    load_corel5k,
    load_fashion_mnist,
    load_idx,
)
from fastfire.datasets._synthetic import make_extreme_classification
from fastfire.datasets._xc import dump_xc, load_svmlight, load_xc

__all__ = [
    "dump_xc",
    "get_data_home",
    "load_arff",
    "load_bibtex",
    "load_corel5k",
    "load_fashion_mnist",
    "load_idx",
    "load_svmlight",
    "load_xc",
    "make_extreme_classification",
]
