"""Batch normalization (Ioffe & Szegedy 2015) from basic ops: training, inference, moving stats."""

from __future__ import annotations

import tensorflow as tf

from normlab.core import _checks, closed_form
from normlab.core.stats import moments, normalize

# How moving statistics average batch statistics: Keras' plain exponential moving average, or
# that average with Adam's bias correction (bias_corrected_update).
MOVING_AVERAGES = ("plain", "bias_corrected")


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


def _check_momentum(momentum) -> float:
    if isinstance(momentum, bool) or not 0.0 <= float(momentum) < 1.0:
        raise ValueError(
            f"momentum must be in [0, 1) (0.99 keeps 99% of the moving value at "
            f"each step), got {momentum!r}."
        )
    return float(momentum)


def moving_average_update(moving: tf.Tensor, batch_value: tf.Tensor, momentum: float) -> tf.Tensor:
    """The new moving statistic: `moving * momentum + batch_value * (1 - momentum)`.

    Keras' convention (momentum 0.99 keeps 99% of the old value); PyTorch's `momentum=0.1`
    is Keras' 0.9. The result has `moving`'s dtype (float32 for moving statistics).

    Raises:
        ValueError: momentum outside [0, 1).
    """
    _check_momentum(momentum)
    moving = tf.convert_to_tensor(moving)
    batch_value = tf.cast(batch_value, moving.dtype)
    return moving * momentum + batch_value * (1.0 - momentum)


def bias_corrected_update(
    estimate: tf.Tensor, batch_value: tf.Tensor, momentum: float, count: tf.Tensor
) -> tf.Tensor:
    """The bias-corrected moving statistic after update number `count` (1, 2, ...).

    Adam's correction (Kingma & Ba 2015) of an average m_t = momentum * m_{t-1} +
    (1 - momentum) * x_t started at m_0 = 0 is m_t / (1 - momentum^t). It is kept as the
    corrected estimate itself, e_t = m_t / (1 - momentum^t), which obeys

        w_t = (1 - momentum) / (1 - momentum^t)
        e_t = e_{t-1} * (1 - w_t) + x_t * w_t

    (m_t = momentum * (1 - momentum^(t-1)) e_{t-1} + (1 - momentum) x_t, divided by
    1 - momentum^t; the two weights sum to 1). So a moving-statistics variable holds the value
    inference uses at every step, as with the plain average, and no zero-started accumulator
    is stored: w_1 = 1, so the first update replaces the initial value by the first batch's
    statistics, and e_t is the average of x_1..x_t with weights (1 - momentum) momentum^(t-k)
    / (1 - momentum^t). w_t is computed in float64 from `count`, then cast to `estimate`'s dtype.

    Args:
        estimate: e_{t-1} (any value when count is 1: its weight is 0).
        batch_value: x_t, cast to estimate's dtype.
        momentum: in [0, 1), Keras' convention.
        count: t >= 1, the number of updates including this one (an integer tensor or int).

    Returns:
        e_t in estimate's dtype.
    """
    momentum = _check_momentum(momentum)
    estimate = tf.convert_to_tensor(estimate)
    t = tf.cast(count, tf.float64)
    tf.debugging.assert_positive(t, "bias_corrected_update: count must be >= 1")
    weight = (1.0 - momentum) / (1.0 - tf.pow(tf.constant(momentum, tf.float64), t))
    weight = tf.cast(weight, estimate.dtype)
    return estimate * (1.0 - weight) + tf.cast(batch_value, estimate.dtype) * weight
