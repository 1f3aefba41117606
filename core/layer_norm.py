"""Layer, group and RMS normalization from basic ops: per-example statistics, batch-independent."""

from __future__ import annotations

import tensorflow as tf

from normlab.core import _checks, closed_form
from normlab.core.stats import moments, normalize


def _per_example_param(param, name: str, x: tf.Tensor) -> tf.Tensor:
    """Checks a scale/offset that is either per channel [C] or per element [*x.shape[1:]]."""
    param = _checks.as_float_tensor(param, name)
    _checks.check_param(
        param,
        name,
        [tf.TensorShape([x.shape[-1]]), x.shape[1:]],
        "per channel, or the full per-example shape",
    )
    return param


def layer_norm(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    eps: float = 1e-3,
    *,
    backward: str = "closed_form",
) -> tf.Tensor:
    """Layer normalization (Ba, Kiros & Hinton 2016): statistics per example.

    Reduces over every axis but the first: (1,) for [N, C], (1, 2, 3) for [N, H, W, C]:

        mean_n = mean(x[n]);  var_n = mean((x[n] - mean_n)^2)          (biased)
        y[n]   = (x[n] - mean_n) * rsqrt(var_n + eps) * gamma + beta

    The same computation in training and inference, defined for a batch of one. With
    per-channel gamma/beta it equals group_norm with one group (Keras
    GroupNormalization(groups=1)); with full-shape gamma/beta it equals Keras
    LayerNormalization(axis=[1, ..., rank-1]) (Keras' default axis=-1 is a different norm for
    images: per pixel over channels).

    Args:
        x: [N, ..., C] float16, bfloat16, float32 or float64; statistics in float32
            (float64 for float64 input), y in x's dtype.
        gamma, beta: [C] (broadcast over the other axes) or x.shape[1:].
        eps: > 0, inside the root. Default 1e-3 as in Keras.
        backward: "closed_form" (the default, because it is the faster; `python -m
            bench.ops` compares them): the hand-derived backward pass of core.closed_form;
            second-order gradients raise NotImplementedError; one-pass statistics with a
            bounded error. "autodiff": TensorFlow differentiating the forward op by op, with
            core.moments' corrected two-pass statistics (the readable reference; supports
            gradients of gradients).

    Raises:
        TypeError: a non-floating input.
        ValueError: rank < 2, gamma/beta of another shape, eps <= 0, a bad `backward`.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    gamma = _per_example_param(gamma, "gamma", x)
    beta = _per_example_param(beta, "beta", x)
    eps = _checks.check_eps(eps)
    axes = list(range(1, x.shape.rank))
    if closed_form.check_backward(backward) == "closed_form":
        return closed_form.standardize(x, gamma, beta, axes, eps)[0]
    mean, variance = moments(x, axes, keepdims=True)
    return normalize(x, mean, variance, gamma, beta, eps)


def group_norm(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    groups: int,
    eps: float = 1e-3,
    *,
    backward: str = "closed_form",
) -> tf.Tensor:
    """Group normalization (Wu & He 2018): per example, per group of consecutive channels.

    The C channels are split into `groups` groups of C // groups channels; for each example
    and group, mean and biased variance are taken over that group's channels and all
    spatial positions:

        x' = reshape(x, [N, ..., groups, C // groups])
        y  = reshape((x' - mean) * rsqrt(var + eps), x.shape) * gamma + beta

    groups=1 is layer norm with per-channel gamma; groups=C is instance norm.

    Args:
        x: [N, ..., C] float tensor; the channel count C must be known.
        gamma, beta: [C].
        groups: a positive divisor of C.
        eps: > 0, inside the root. Default 1e-3 as in Keras.
        backward: "closed_form" (the default, faster) or "autodiff"; as in `layer_norm`.

    Raises:
        TypeError: a non-floating input.
        ValueError: rank < 2, unknown C, groups not dividing C, gamma/beta not [C], eps <= 0,
            a bad `backward`.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    channels = x.shape[-1]
    if channels is None:
        raise ValueError("group_norm needs the channel count (x.shape[-1]) to be known.")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or channels % groups:
        raise ValueError(
            f"groups must be a positive divisor of the {channels} channels, got {groups!r}."
        )
    gamma = _checks.as_float_tensor(gamma, "gamma")
    beta = _checks.as_float_tensor(beta, "beta")
    _checks.check_param(gamma, "gamma", [tf.TensorShape([channels])], "one scale per channel")
    _checks.check_param(beta, "beta", [tf.TensorShape([channels])], "one offset per channel")
    eps = _checks.check_eps(eps)
    backward = closed_form.check_backward(backward)
    rank = x.shape.rank
    grouped_shape = tf.concat([tf.shape(x)[:-1], [groups, channels // groups]], 0)
    # Reduce over the spatial axes and the channels within a group; keep batch and group.
    axes = list(range(1, rank - 1)) + [rank]
    if backward == "closed_form":
        group_shape = [groups, channels // groups]
        y = closed_form.standardize(
            tf.reshape(x, grouped_shape),
            tf.reshape(gamma, group_shape),
            tf.reshape(beta, group_shape),
            axes,
            eps,
        )[0]
        return tf.reshape(y, tf.shape(x))

    # The whole computation in the statistics' dtype, one cast back at the end: rounding the
    # normalized value to float16/bfloat16 before the affine step would round twice.
    dtype = _checks.stats_dtype(x.dtype)
    grouped = tf.reshape(tf.cast(x, dtype), grouped_shape)
    mean, variance = moments(grouped, axes, keepdims=True)
    normalized = tf.reshape(normalize(grouped, mean, variance, None, None, eps), tf.shape(x))
    y = normalized * tf.cast(gamma, dtype) + tf.cast(beta, dtype)
    return tf.cast(y, x.dtype)


def rms_norm(
    x: tf.Tensor, gamma: tf.Tensor, eps: float = 1e-6, *, backward: str = "closed_form"
) -> tf.Tensor:
    """RMS normalization (Zhang & Sennrich 2019): layer norm without centering or offset.

    Per example, over every axis but the first:

        y = x * rsqrt(mean(x^2) + eps) * gamma

    The mean of squares is taken in float32 (float64 for float64 input): in float16, x^2
    overflows for |x| > 256.

    Args:
        x: [N, ..., C] float tensor.
        gamma: [C] or x.shape[1:].
        eps: > 0, inside the root. Default 1e-6 as in Keras RMSNormalization.
        backward: "closed_form" (the default, faster) or "autodiff"; as in `layer_norm`. The
            closed form is layer norm's primitive without centering:
            dx = r * (dy * gamma - xhat * mean(dy * gamma * xhat)), xhat = x * r.

    Raises:
        TypeError: a non-floating input.
        ValueError: rank < 2, gamma of another shape, eps <= 0, a bad `backward`.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    gamma = _per_example_param(gamma, "gamma", x)
    eps = _checks.check_eps(eps)
    axes = list(range(1, x.shape.rank))
    if closed_form.check_backward(backward) == "closed_form":
        beta = tf.zeros_like(gamma)  # no offset; its gradient is computed and dropped
        return closed_form.standardize(x, gamma, beta, axes, eps, center=False)[0]
    dtype = _checks.stats_dtype(x.dtype)
    mean_square = tf.reduce_mean(tf.square(tf.cast(x, dtype)), axis=axes, keepdims=True)
    zero = tf.zeros([], dtype)
    return normalize(x, zero, mean_square, gamma, None, eps)
