"""Selectors: which neurons of a layer are computed for each sample.

A selector is a small parameter object attached to one weight layer. It plugs into the
engine in three places:

- ``make_layer(coef, intercept, activation)`` builds the layer object that computes with it
  (:class:`~fastfire.nn.layers.DenseLayer` by default; a method whose products differ, such as
  sampled products or sparse active outputs, returns its own layer class with the same
  interface: ``forward``, ``backward``, ``activation_backward``, ``params``, ``grads``);
- ``select(layer, inputs, training)``, called by the layer before its forward pass, returns
  the ActiveSet *pattern* of output neurons to compute for each sample (its ``indptr`` /
  ``indices``), or None to compute them all;
- ``after_update(layer)``, called after each optimizer step, does the upkeep (rehashing tables,
  repairing trees).

Selectors hold no training state that the layer also holds.

``"dense"`` (:class:`Dense`) is the reference every other method is tested against; the
sparse methods (LSH, threshold firing, column-row sampling) register here under their names.
"""

import copy
import numbers


class Selector:
    """Base class of selectors: every neuron active, no upkeep.

    Subclasses override :meth:`select` and :meth:`after_update`. ``name`` is the string that
    selects the class with its defaults in ``MLPClassifier(selection=...)``.
    """

    name = None

    def make_layer(self, coef, intercept, activation):
        """Build the layer that computes with this selector (a dense layer by default).

        Parameters
        ----------
        coef : ndarray of shape (n_in, n_out), float32
            Weights, used in place.
        intercept : ndarray of shape (n_out,), float32
            Biases, used in place.
        activation : str
            The layer's activation ("identity" for the output layer).

        Returns
        -------
        layer : DenseLayer or a class with the same interface
        """
        from fastfire.nn.layers import DenseLayer

        return DenseLayer(coef, intercept, activation, self)

    def select(self, layer, inputs, training):
        """Return the active output neurons per sample (an ActiveSet pattern) or None for all.

        Parameters
        ----------
        layer : DenseLayer
            The layer about to run its forward pass.
        inputs : ActiveSet
            The layer's input.
        training : bool
            True during ``fit``; predictions are exact (dense) unless a selector opts in.
        """
        return None

    def after_update(self, layer):
        """Upkeep after the optimizer updated ``layer`` (nothing for dense)."""

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = object.__hash__


SELECTORS = {}


def register_selector(cls):
    """Class decorator: make ``cls`` selectable by its ``name`` in ``selection=...``."""
    if not cls.name or cls.name in SELECTORS:
        raise ValueError(f"selector name {cls.name!r} is empty or already registered")
    SELECTORS[cls.name] = cls
    return cls


@register_selector
class Dense(Selector):
    """Compute every neuron of the layer (BLAS GEMM): the exact reference path.

    Examples
    --------
    >>> from fastfire import Dense, MLPClassifier
    >>> clf = MLPClassifier(hidden_layer_sizes=(64,), selection=Dense())
    """

    name = "dense"




def _make_selector(spec, position):
    if isinstance(spec, str):
        try:
            return SELECTORS[spec]()
        except KeyError:
            raise ValueError(
                f"Unknown selection {spec!r} for weight layer {position}; "
                f"expected one of {sorted(SELECTORS)} or a Selector instance."
            ) from None
    if isinstance(spec, Selector):
        return copy.deepcopy(spec)  # the estimator's parameter is never mutated by training
    raise TypeError(
        f"selection entries must be strings or Selector instances; got {spec!r} "
        f"for weight layer {position}."
    )


def resolve_selection(selection, n_weight_layers):
    """Turn an estimator's ``selection`` parameter into one fresh Selector per weight layer.

    Parameters
    ----------
    selection : str, Selector, or list/tuple of those
        One selector for every weight layer, or one entry per weight layer (hidden layers
        first, output layer last).
    n_weight_layers : int
        Number of weight layers of the network.

    Returns
    -------
    selectors : list of Selector
    """
    if isinstance(selection, (list, tuple)):
        if len(selection) != n_weight_layers:
            raise ValueError(
                f"selection has {len(selection)} entries but the network has "
                f"{n_weight_layers} weight layers (hidden layers first, output last)."
            )
        return [_make_selector(spec, i) for i, spec in enumerate(selection)]
    if isinstance(selection, numbers.Number):
        raise TypeError(f"selection must be a string, a Selector or a list of them; got {selection!r}.")
    return [_make_selector(selection, i) for i in range(n_weight_layers)]
