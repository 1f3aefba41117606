"""Weight normalization (Salimans & Kingma 2016) from basic ops, and its data-dependent init."""

from __future__ import annotations

import tensorflow as tf

from normlab.core import _checks
from normlab.core.stats import moments

# Floor on the squared norm, the same as tf.nn.l2_normalize's: a zero direction gives w = 0
# and finite gradients instead of 0/0. The gradient of such a direction is g / sqrt(floor),
# 1e6 g, which float16 cannot hold (max 65504): for float16 kernels the floor is the squared
# smallest normal float16, 2^-28, so that gradient is 2^14 g.
_MIN_SQUARED_NORM = 1e-12
_MIN_SQUARED_NORM_FLOAT16 = 2.0**-28


def _direction_squared_norm(v: tf.Tensor) -> tf.Tensor:
    """Sum of squares of `v` over every axis but the last, in float32 (float64 for float64)."""
    v32 = tf.cast(v, _checks.stats_dtype(v.dtype))
    return tf.reduce_sum(tf.square(v32), axis=list(range(v.shape.rank - 1)))


def kernel_norm(v: tf.Tensor) -> tf.Tensor:
    """||v|| per output unit: the L2 norm over every axis but the last. [out], float32/64.

    Initialising g to this makes weight_norm(v, g) == v, so a weight-normed network starts as
    the same function as the plain one.
    """
    v = _checks.as_float_tensor(v, "v", min_rank=2)
    return tf.sqrt(_direction_squared_norm(v))


def weight_norm(v: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """The weight-normalized kernel w = g * v / ||v||, one g per output unit.

    The norm is over every axis but the last (the output units): axis 0 of a dense kernel
    [in, out], axes (0, 1, 2) of a conv kernel [h, w, in, out]. Hence ||w[..., j]|| = |g[j]|.
    Computed as v * (g * rsqrt(max(||v||^2, floor))), the floor being tf.nn.l2_normalize's 1e-12
    (2^-28 for float16 v, so the gradient stays representable), so an all-zero direction gives
    w = 0 with finite gradients rather than NaN.

    Args:
        v: the direction, [in, out] or [h, w, in, out] (any rank >= 2), float dtype.
        g: [out], the per-unit length; cast to the norm's dtype (float32, or float64).

    Returns:
        w with v's shape and dtype.

    Raises:
        TypeError: a non-floating input.
        ValueError: rank of v < 2, or g not [out].
    """
    v = _checks.as_float_tensor(v, "v", min_rank=2)
    g = _checks.as_float_tensor(g, "g")
    _checks.check_param(g, "g", [tf.TensorShape([v.shape[-1]])], "one length per output unit")
    dtype = _checks.stats_dtype(v.dtype)
    floor = _MIN_SQUARED_NORM_FLOAT16 if v.dtype == tf.float16 else _MIN_SQUARED_NORM
    inv_norm = tf.math.rsqrt(tf.maximum(_direction_squared_norm(v), floor))
    return tf.cast(tf.cast(v, dtype) * (tf.cast(g, dtype) * inv_norm), v.dtype)


def data_dependent_init(
    preactivations: tf.Tensor, init_scale: float = 1.0, eps: float = 1e-6
) -> tuple[tf.Tensor, tf.Tensor]:
    """Weight norm's data-dependent initialisation (Salimans & Kingma 2016, section 3).

    Given the pre-activations t = x . v / ||v|| of one minibatch, computed with g = 1 and no
    bias, returns (g, b) such that g * t + b has zero mean and unit variance per output unit
    (times `init_scale`):

        g = init_scale / sqrt(var[t] + eps),    b = -mean[t] * g

    Statistics are over every axis but the last ([N, out] for dense, [N, H, W, out] for conv).

    Args:
        preactivations: [N, ..., out] float tensor.
        init_scale: the target standard deviation, > 0.
        eps: > 0, keeps g finite for a unit that is constant on the batch.

    Returns:
        (g, b), each [out], in float32 (float64 for float64 input).
    """
    t = _checks.as_float_tensor(preactivations, "preactivations", min_rank=2)
    eps = _checks.check_eps(eps)
    init_scale = _checks.check_eps(init_scale, "init_scale")
    mean, variance = moments(t, list(range(t.shape.rank - 1)))
    g = init_scale * tf.math.rsqrt(variance + eps)
    return g, -mean * g
