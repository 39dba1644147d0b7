"""Output losses: fused output activation, loss value and gradient (Cython kernels).

A loss receives the output layer's ActiveSet. ``loss_and_delta`` returns the summed loss and
the gradient with respect to the output values, in the layout of the ActiveSet's ``values``
(the dense losses write it over the logits, which are not needed afterwards).
"""

from fastfire._core._active import sparse_logistic_xent, sparse_softmax_xent
from fastfire._core._loss import (
    logistic_cross_entropy,
    logistic_inplace,
    softmax_cross_entropy,
    softmax_inplace,
    squared_error,
)


class SoftmaxCrossEntropy:
    """Softmax output with cross-entropy (multiclass); targets are int32 class indices."""

    out_activation = "softmax"
    target_kind = "indices"

    def loss_and_delta(self, outputs, target, n_threads):
        """Summed loss of the batch and ``softmax(logits) - onehot(target)``."""
        logits = outputs.values
        return softmax_cross_entropy(logits, target, logits, n_threads), logits

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """scikit-learn's ``log_loss``: mean over samples."""
        return loss_sum / n_samples

    def transform(self, outputs, n_threads):
        """In place: logits to class probabilities."""
        softmax_inplace(outputs.values, n_threads)


class LogisticCrossEntropy:
    """Independent logistic outputs with binary cross-entropy (binary and multilabel)."""

    out_activation = "logistic"
    target_kind = "dense"

    def loss_and_delta(self, outputs, target, n_threads):
        """Summed loss over all entries and ``sigmoid(logits) - target``."""
        logits = outputs.values
        return logistic_cross_entropy(logits, target, logits, n_threads), logits

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """scikit-learn's ``binary_log_loss``: summed over outputs, mean over samples."""
        return loss_sum / n_samples

    def transform(self, outputs, n_threads):
        """In place: logits to probabilities."""
        logistic_inplace(outputs.values, n_threads)


class SquaredError:
    """Identity output with squared error (regression)."""

    out_activation = "identity"
    target_kind = "dense"

    def loss_and_delta(self, outputs, target, n_threads):
        """Summed squared error and ``predictions - target``."""
        predictions = outputs.values
        return squared_error(predictions, target, predictions, n_threads), predictions

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """scikit-learn's ``squared_loss``: mean over all entries, halved."""
        return loss_sum / (n_samples * n_outputs) / 2.0

    def transform(self, outputs, n_threads):
        """Identity."""


class SparseSoftmaxCrossEntropy:
    """Softmax over each sample's active set (a sparse output ActiveSet), the target spread
    evenly over the sample's true labels (SLIDE). ``target`` is the per-sample number of true
    labels, which the output layer placed first in each row of the active set."""

    out_activation = "softmax"
    target_kind = "forced"

    def loss_and_delta(self, outputs, target, n_threads):
        """Summed loss and ``p - target`` over the active entries (written over the logits)."""
        logits = outputs.values
        return sparse_softmax_xent(outputs.indptr, target, logits, n_threads), logits

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """Mean over samples."""
        return loss_sum / n_samples

    def transform(self, outputs, n_threads):
        """In place: logits to probabilities (a dense output: softmax over every neuron)."""
        softmax_inplace(outputs.values, n_threads)


class SparseLogisticCrossEntropy:
    """Independent logistic outputs over each sample's active set: target 1 on its true labels
    (placed first in the row), 0 on the other active neurons; inactive neurons add nothing."""

    out_activation = "logistic"
    target_kind = "forced"

    def loss_and_delta(self, outputs, target, n_threads):
        """Summed binary cross-entropy over the active entries and ``sigmoid(z) - y``."""
        logits = outputs.values
        return sparse_logistic_xent(outputs.indptr, target, logits, n_threads), logits

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """Summed over active outputs, mean over samples."""
        return loss_sum / n_samples

    def transform(self, outputs, n_threads):
        """In place: logits to probabilities."""
        logistic_inplace(outputs.values, n_threads)


LOSSES = {cls.out_activation: cls for cls in (SoftmaxCrossEntropy, LogisticCrossEntropy, SquaredError)}
