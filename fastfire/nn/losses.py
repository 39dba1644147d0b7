"""Output losses: fused output activation, loss value and gradient (Cython kernels)."""

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

    def loss_and_delta(self, logits, target, delta, n_threads):
        """Return the batch's summed loss; write ``softmax(logits) - onehot(target)`` to delta."""
        return softmax_cross_entropy(logits, target, delta, n_threads)

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """scikit-learn's ``log_loss``: mean over samples."""
        return loss_sum / n_samples

    def transform(self, logits, n_threads):
        """In place: logits to class probabilities."""
        softmax_inplace(logits, n_threads)


class LogisticCrossEntropy:
    """Independent logistic outputs with binary cross-entropy (binary and multilabel)."""

    out_activation = "logistic"
    target_kind = "dense"

    def loss_and_delta(self, logits, target, delta, n_threads):
        """Return the summed loss over all entries; write ``sigmoid(logits) - target``."""
        return logistic_cross_entropy(logits, target, delta, n_threads)

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """scikit-learn's ``binary_log_loss``: summed over outputs, mean over samples."""
        return loss_sum / n_samples

    def transform(self, logits, n_threads):
        """In place: logits to probabilities."""
        logistic_inplace(logits, n_threads)


class SquaredError:
    """Identity output with squared error (regression)."""

    out_activation = "identity"
    target_kind = "dense"

    def loss_and_delta(self, predictions, target, delta, n_threads):
        """Return the summed squared error; write ``predictions - target`` to delta."""
        return squared_error(predictions, target, delta, n_threads)

    def mean_loss(self, loss_sum, n_samples, n_outputs):
        """scikit-learn's ``squared_loss``: mean over all entries, halved."""
        return loss_sum / (n_samples * n_outputs) / 2.0

    def transform(self, predictions, n_threads):
        """Identity."""


LOSSES = {cls.out_activation: cls for cls in (SoftmaxCrossEntropy, LogisticCrossEntropy, SquaredError)}
