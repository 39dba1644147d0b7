"""Save and load fitted models as ``.npz`` (arrays) + JSON (everything else), never pickle.

A file written by :func:`save` can be loaded from a stranger safely: :func:`load` reads it
with ``allow_pickle=False`` and only rebuilds classes fastfire knows.
"""

import json
import os

import numpy as np
from sklearn.utils.validation import check_is_fitted

from fastfire._version import __version__
from fastfire.nn import optimizers as _optimizers
from fastfire.nn import selectors as _selectors

FORMAT_VERSION = 1

# Training-time objects that are rebuilt rather than stored.
_REBUILT = {"_network", "_random_state"}


def _estimator_classes():
    from fastfire.estimators import MLPClassifier, MLPRegressor

    return {cls.__name__: cls for cls in (MLPClassifier, MLPRegressor)}


def _stateful_classes():
    """Objects stored through their ``__dict__``: optimizers and selectors."""
    classes = [_optimizers.Adam, _optimizers.SGD, *_selectors.SELECTORS.values()]
    return {cls.__name__: cls for cls in classes}


def _encode(value, key, arrays):
    """JSON-able description of ``value``; arrays go to ``arrays`` under ``key``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.dtype):
        return {"dtype": value.str}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            if not all(isinstance(v, str) for v in value.ravel()):
                raise TypeError(f"cannot save {key}: an object array that is not all strings")
            value = value.astype(str)
        arrays[key] = value
        return {"array": key}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{key}.{i}", arrays) for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, f"{key}.{k}", arrays) for k, v in value.items()}}
    if type(value).__name__ in _stateful_classes():
        return {"object": type(value).__name__, "state": _encode(vars(value), key, arrays)}
    raise TypeError(f"cannot save {key}: values of type {type(value).__name__} are not supported")


def _decode(spec, arrays):
    if not isinstance(spec, (dict, list)):
        return spec
    if isinstance(spec, list):
        return [_decode(v, arrays) for v in spec]
    if "array" in spec:
        return arrays[spec["array"]]
    if "dtype" in spec:
        return np.dtype(spec["dtype"])
    if "tuple" in spec:
        return tuple(_decode(v, arrays) for v in spec["tuple"])
    if "dict" in spec:
        return {k: _decode(v, arrays) for k, v in spec["dict"].items()}
    if "object" in spec:
        cls = _stateful_classes().get(spec["object"])
        if cls is None:
            raise ValueError(f"unknown object type {spec['object']!r} in the model file")
        obj = cls.__new__(cls)
        obj.__dict__.update(_decode(spec["state"], arrays))
        return obj
    raise ValueError(f"malformed entry in the model file: {spec!r}")


def save(model, path):
    """Store a fitted fastfire estimator in one ``.npz`` file without pickle.

    Parameters
    ----------
    model : MLPClassifier or MLPRegressor
        A fitted estimator. A ``random_state`` given as a RandomState instance is stored
        as None (only seeds can be written).
    path : str or os.PathLike
        Destination; ``.npz`` is appended by NumPy when missing.

    Examples
    --------
    >>> import os, tempfile, warnings
    >>> import numpy as np, fastfire
    >>> X, y = np.random.RandomState(0).rand(40, 3), np.arange(40) % 2
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # 5 epochs do not converge
    ...     clf = fastfire.MLPClassifier((8,), max_iter=5, random_state=0).fit(X, y)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> fastfire.save(clf, path)
    >>> bool((fastfire.load(path).predict(X) == clf.predict(X)).all())
    True
    """
    if type(model).__name__ not in _estimator_classes():
        raise TypeError(f"save() supports {sorted(_estimator_classes())}; got {type(model).__name__}.")
    check_is_fitted(model)
    params = model.get_params(deep=False)
    if isinstance(params.get("random_state"), np.random.RandomState):
        params["random_state"] = None
    arrays = {}
    meta = {
        "format": "fastfire-model",
        "format_version": FORMAT_VERSION,
        "fastfire_version": __version__,
        "class": type(model).__name__,
        "params": _encode(params, "params", arrays),
        "attributes": _encode(
            {k: v for k, v in vars(model).items() if k not in _REBUILT and k not in params},
            "attr", arrays,
        ),
    }
    np.savez(os.fspath(path), __meta__=np.array(json.dumps(meta)), **arrays)


def load(path):
    """Load a model written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    model : MLPClassifier or MLPRegressor
        The fitted estimator, ready to predict and to continue training.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
        if "__meta__" not in data.files:
            raise ValueError(f"{os.fspath(path)} is not a fastfire model file (no metadata).")
        meta = json.loads(str(data["__meta__"]))
    if meta.get("format") != "fastfire-model":
        raise ValueError(f"{os.fspath(path)} is not a fastfire model file.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)} was written by fastfire {meta.get('fastfire_version')} in format "
            f"{meta['format_version']}; this fastfire ({__version__}) reads up to {FORMAT_VERSION}."
        )
    cls = _estimator_classes().get(meta["class"])
    if cls is None:
        raise ValueError(f"{os.fspath(path)} holds an unknown model class {meta['class']!r}.")
    model = cls(**_decode(meta["params"], arrays))
    for name, value in _decode(meta["attributes"], arrays).items():
        setattr(model, name, value)
    model._build_network()
    return model
