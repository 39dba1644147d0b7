"""The Examples sections of the public docstrings run and print what they say."""

import doctest
import importlib
import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning

MODULES = [
    "fastfire._config",
    "fastfire.datasets._synthetic",
    "fastfire.datasets._xc",
    "fastfire.estimators.mlp",
    "fastfire.metrics",
    "fastfire.nn.selectors",
    "fastfire.persistence",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"no docstring example found in {name}"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
