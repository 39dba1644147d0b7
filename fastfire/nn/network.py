"""Network: a stack of layers and a loss; one training step and chunked prediction."""

import numpy as np

from fastfire.nn.active import ActiveSet
from fastfire.nn.losses import LOSSES

# Prediction runs in row chunks so that no layer's output exceeds this many floats, or the size
# of the largest weight matrix when that is larger (see ``predict_chunk_rows``).
PREDICT_CHUNK_FLOATS = 1 << 22


def predict_chunk_rows(layers, n_samples):
    """Rows per prediction chunk: no layer's output over ``max(PREDICT_CHUNK_FLOATS, largest
    weight matrix)`` floats.

    Each chunk reads every weight matrix once; letting a chunk's outputs grow to the size of the
    largest matrix keeps that read amortised over enough rows (a 128 x 670K output layer scores
    128 rows per pass, not 6) while prediction never needs more than about twice the model's
    memory.
    """
    widest = max(max(l.coef.shape) for l in layers)
    budget = max(PREDICT_CHUNK_FLOATS, max(l.coef.size for l in layers))
    return max(1, min(n_samples, budget // widest))


class Network:
    """A multilayer perceptron over ActiveSets.

    Parameters
    ----------
    coefs, intercepts : list of ndarray
        Per weight layer, ``(n_in, n_out)`` weights and ``(n_out,)`` biases (float32,
        C-contiguous); used in place, so the estimator's ``coefs_`` see every update.
    activation : str
        Hidden-layer activation.
    out_activation : {"softmax", "logistic", "identity"}
        Output activation; selects the loss.
    selectors : list of Selector
        One per weight layer.
    """

    def __init__(self, coefs, intercepts, activation, out_activation, selectors):
        n = len(coefs)
        self.layers = [
            selectors[i].make_layer(coefs[i], intercepts[i], activation if i < n - 1 else "identity")
            for i in range(n)
        ]
        # A layer may store its parameters in its own layout (an LSH layer keeps neuron-major
        # weights and exposes coef as a Fortran-ordered view): the caller's lists then refer to
        # the layer's arrays, so the estimator's coefs_ keep seeing every update.
        for i, layer in enumerate(self.layers):
            if layer.coef is not coefs[i]:
                coefs[i] = layer.coef
            if layer.intercept is not intercepts[i]:
                intercepts[i] = layer.intercept
        self.loss = LOSSES[out_activation]()

    @classmethod
    def from_layers(cls, layers, out_activation):
        """A network of prebuilt layers (e.g. convolutions followed by dense layers).

        Each layer needs ``forward``, ``backward``, ``activation_backward``, ``coef``,
        ``intercept``, ``coef_grad``, ``intercept_grad`` and ``selector``. A layer whose
        ``applies_input_activation`` is true (max pooling after ReLU) returns the gradient
        w.r.t. the previous layer's pre-activation, whose ``activation_backward`` is then
        skipped.
        """
        network = cls.__new__(cls)
        network.layers = list(layers)
        network.loss = LOSSES[out_activation]()
        return network

    @property
    def params(self):
        """Parameter arrays in a fixed order: every layer's coef, then every intercept."""
        return [l.coef for l in self.layers] + [l.intercept for l in self.layers]

    @property
    def grads(self):
        """Gradient arrays, in the order of :attr:`params`."""
        return [l.coef_grad for l in self.layers] + [l.intercept_grad for l in self.layers]

    @property
    def n_outputs(self):
        """Width of the output layer."""
        return self.layers[-1].coef.shape[1]

    def forward(self, inputs, n_threads, training=False):
        """Run every layer; return the list of ActiveSets (input first, logits last)."""
        activations = [inputs]
        for layer in self.layers:
            activations.append(layer.forward(activations[-1], n_threads, training))
        return activations

    def train_step(self, inputs, target, alpha, optimizer, n_threads):
        """Forward, loss, backward and one optimizer step on a batch.

        Parameters
        ----------
        inputs : ActiveSet
            The batch (dense or CSR).
        target : ndarray
            int32 class indices (softmax) or a dense float32 ``(n, n_outputs)`` target.
        alpha : float
            L2 penalty, scaled by the batch size as scikit-learn does.
        optimizer : Adam or SGD
        n_threads : int

        Returns
        -------
        loss : float
            Mean loss of the batch, L2 term included.
        """
        n = inputs.n_samples
        out_layer = self.layers[-1]
        set_targets = getattr(out_layer, "set_targets", None)
        if set_targets is not None:  # sparse output layers force the true labels
            set_targets(target)
        activations = self.forward(inputs, n_threads, training=True)
        if activations[-1].is_dense:
            loss_fn = self.loss
            if not isinstance(target, np.ndarray):  # sparse targets kept for a sparse layer
                target = target.toarray()
            loss_sum, delta = loss_fn.loss_and_delta(activations[-1], target, n_threads)
        else:  # a sparse output: loss over each sample's active set, true labels first
            loss_fn = out_layer.sparse_loss
            loss_sum, delta = loss_fn.loss_and_delta(activations[-1], out_layer.n_forced, n_threads)
        loss = loss_fn.mean_loss(loss_sum, n, self.n_outputs)

        # The L2 term uses the weights before the update; the optimizer sums their squares in the
        # update's own pass (row-sparse layers are penalised, and counted, on the rows they update).
        n_layers = len(self.layers)
        l2 = alpha / n
        l2s = [l2] * n_layers + [0.0] * n_layers
        squared_norm = 0.0
        stepped = []          # parameters already updated in this step
        for i in range(n_layers - 1, -1, -1):
            layer = self.layers[i]
            if i > 0 and getattr(layer, "defers_input_grad", False):
                input_grad = layer.backward(delta, n_threads, defer_input_grad=True)
            else:
                input_grad = layer.backward(delta, n_threads, need_input_grad=i > 0)
            if i > 0:
                if input_grad is None:
                    # left to the optimizer's pass over the layer's rows: update it now
                    squared_norm += optimizer.step(self.params, self.grads, l2s, n_threads,
                                                   indices=[i, n_layers + i],
                                                   advance=not stepped)
                    stepped += [i, n_layers + i]
                    input_grad = layer.coef_grad.input_grad
                if not getattr(layer, "applies_input_activation", False):
                    self.layers[i - 1].activation_backward(activations[i], input_grad, n_threads)
                delta = input_grad
        if stepped:
            rest = [k for k in range(2 * n_layers) if k not in stepped]
            squared_norm += optimizer.step(self.params, self.grads, l2s, n_threads, indices=rest,
                                           advance=False)
        else:
            squared_norm = optimizer.step(self.params, self.grads, l2s, n_threads)
        loss += 0.5 * alpha * squared_norm / n
        for layer in self.layers:
            layer.selector.after_update(layer)
        return loss

    def output_transform(self, outputs, n_threads):
        """In place: output-layer logits to the model's outputs (the loss the output layer was
        trained with: a sparse layer may train with softmax on multilabel targets)."""
        sparse_loss = getattr(self.layers[-1], "sparse_loss", None)
        (sparse_loss or self.loss).transform(outputs, n_threads)

    def predict(self, X, n_threads):
        """Output activations (probabilities or regression values) for every row of ``X``.

        Parameters
        ----------
        X : ndarray of float32 or scipy CSR matrix, shape (n_samples, n_features)
        n_threads : int

        Returns
        -------
        out : ndarray of shape (n_samples, n_outputs), float32
        """
        n_samples = X.shape[0]
        chunk = predict_chunk_rows(self.layers, n_samples)
        out = np.empty((n_samples, self.n_outputs), dtype=np.float32)
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            outputs = self.forward(ActiveSet.from_data(X[start:stop]), n_threads)[-1]
            self.output_transform(outputs, n_threads)
            out[start:stop] = outputs.to_dense()
        return out
