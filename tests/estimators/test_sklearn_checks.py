"""scikit-learn's estimator contract, run over fastfire's estimators."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from fastfire import MLPClassifier, MLPRegressor


@parametrize_with_checks(
    [
        MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, random_state=0, n_jobs=2),
        MLPRegressor(hidden_layer_sizes=(16,), max_iter=200, random_state=0, n_jobs=2),
    ]
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)
