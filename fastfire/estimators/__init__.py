"""scikit-learn estimators: thin layers that validate, build a Network and loop over epochs."""

from fastfire.estimators.mlp import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
