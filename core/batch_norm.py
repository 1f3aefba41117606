"""Batch normalization (Ioffe & Szegedy 2015) from basic ops: training, inference, moving stats."""

from __future__ import annotations

import tensorflow as tf

from normlab.core import _checks, closed_form
from normlab.core.stats import moments, normalize


def _checked(x, gamma, beta, eps, name="x"):
    x = _checks.as_float_tensor(x, name, min_rank=2)
    channels = x.shape[-1]
    gamma = _checks.as_float_tensor(gamma, "gamma")
    beta = _checks.as_float_tensor(beta, "beta")
    _checks.check_param(gamma, "gamma", [tf.TensorShape([channels])], "one scale per channel")
    _checks.check_param(beta, "beta", [tf.TensorShape([channels])], "one offset per channel")
    return x, gamma, beta, _checks.check_eps(eps)


def batch_norm_and_moments(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    eps: float = 1e-3,
    *,
    backward: str = "closed_form",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode batch norm that also returns the batch statistics it used.

    Reduces over every axis but the last (the channel axis): axes (0,) for [N, C], (0, 1, 2)
    for [N, H, W, C]:

        mean = mean(x, axes);  var = mean((x - mean)^2, axes)         (biased)
        y    = (x - mean) * rsqrt(var + eps) * gamma + beta

    Gradients flow through mean and var (this is the training-mode function); a module
    updating moving statistics from the returned moments should stop their gradient. Gradients
    into the returned mean and variance are handled exactly by both backward passes.

    Args:
        x: [N, ..., C] float16, bfloat16, float32 or float64. Statistics are computed in
            float32 (float64 for float64 input); y has x's dtype.
        gamma, beta: [C], any float dtype (float32 under mixed precision).
        eps: > 0, added to the variance inside the root. Default 1e-3 as in Keras.
        backward: how the gradient is computed. "closed_form" (the default, because it is
            the faster; `python -m bench.ops` compares them): the hand-derived backward pass
            of core.closed_form, with one-pass statistics shifted by the mean of 1/16 of the
            batch (error bounded; see core.closed_form); second-order gradients raise
            NotImplementedError. "autodiff": TensorFlow differentiates the forward op by op,
            with core.moments' corrected two-pass statistics; the readable reference, and it
            supports gradients of gradients.

    Returns:
        (y, mean, variance); mean and variance are [C] in the statistics' dtype.

    Raises:
        TypeError: a non-floating input.
        ValueError: rank < 2, gamma/beta not [C], eps <= 0, a bad `backward`, or a single
            value per channel ([1, C] input), whose variance is 0 by construction so y would
            equal beta.
    """
    x, gamma, beta, eps = _checked(x, gamma, beta, eps)
    backward = closed_form.check_backward(backward)
    reduced = x.shape[:-1]
    if reduced.is_fully_defined() and reduced.num_elements() == 1:
        raise ValueError(
            f"batch_norm got x of shape {x.shape.as_list()}: one value per channel, so the batch "
            "variance is 0 and the output would be beta whatever x is. Use a batch of at least "
            "2 examples, or layer_norm / group_norm, which do not depend on the batch."
        )
    axes = list(range(x.shape.rank - 1))
    if backward == "closed_form":
        y, mean, variance = closed_form.standardize(x, gamma, beta, axes, eps)
        return y, tf.reshape(mean, [-1]), tf.reshape(variance, [-1])
    mean, variance = moments(x, axes)
    return normalize(x, mean, variance, gamma, beta, eps), mean, variance


def batch_norm(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    eps: float = 1e-3,
    *,
    backward: str = "closed_form",
) -> tf.Tensor:
    """Training-mode batch normalization over every axis but the last.

    y = (x - mean) * rsqrt(var + eps) * gamma + beta, with the biased batch mean and variance
    over all axes but the channel axis. See `batch_norm_and_moments` for the arguments
    (including `backward`: "closed_form", the faster default, or "autodiff") and errors.
    """
    return batch_norm_and_moments(x, gamma, beta, eps, backward=backward)[0]


def batch_norm_inference(
    x: tf.Tensor,
    mean: tf.Tensor,
    variance: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    eps: float = 1e-3,
) -> tf.Tensor:
    """Inference-mode batch norm with given (moving) statistics.

        y = (x - mean) * rsqrt(variance + eps) * gamma + beta

    Args:
        x: [N, ..., C] float tensor.
        mean, variance: [C], usually the float32 moving averages.
        gamma, beta: [C].
        eps: > 0, the same value as in training.

    Returns:
        y in x's dtype; the arithmetic is done in float32 (float64 for float64 x).
    """
    x, gamma, beta, eps = _checked(x, gamma, beta, eps)
    channels = tf.TensorShape([x.shape[-1]])
    mean = _checks.as_float_tensor(mean, "mean")
    variance = _checks.as_float_tensor(variance, "variance")
    _checks.check_param(mean, "mean", [channels], "one mean per channel")
    _checks.check_param(variance, "variance", [channels], "one variance per channel")
    dtype = _checks.stats_dtype(x.dtype)
    return normalize(x, tf.cast(mean, dtype), tf.cast(variance, dtype), gamma, beta, eps)


def moving_average_update(moving: tf.Tensor, batch_value: tf.Tensor, momentum: float) -> tf.Tensor:
    """The new moving statistic: `moving * momentum + batch_value * (1 - momentum)`.

    Keras' convention (momentum 0.99 keeps 99% of the old value); PyTorch's `momentum=0.1`
    is Keras' 0.9. The result has `moving`'s dtype (float32 for moving statistics).

    Raises:
        ValueError: momentum outside [0, 1).
    """
    if isinstance(momentum, bool) or not 0.0 <= float(momentum) < 1.0:
        raise ValueError(
            f"momentum must be in [0, 1) (0.99 keeps 99% of the moving value at "
            f"each step), got {momentum!r}."
        )
    moving = tf.convert_to_tensor(moving)
    batch_value = tf.cast(batch_value, moving.dtype)
    return moving * momentum + batch_value * (1.0 - momentum)
