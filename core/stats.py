"""Statistics and the normalize step shared by every normalization, from basic ops."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from normlab.core import _checks


# Partial sums cover at most this many elements of one axis (see sum_accurately): short enough
# for XLA to fuse the partial sums with the expression summed (bench/README.md compares block
# sizes), and each partial sum's float32 rounding stays at most 16 units in the last place.
_MAX_BLOCK = 16


def _block(shape: tf.TensorShape, axes: Sequence[int]):
    """(axis, b): the first reduced axis of static size s with a divisor b in [4, 16], or None."""
    for axis in sorted(axes):
        size = shape[axis]
        if size is None:
            continue
        block = max(d for d in range(1, _MAX_BLOCK + 1) if size % d == 0)
        if block >= 4:
            return axis, block
    return None


def sum_accurately(x: tf.Tensor, axes: Sequence[int], keepdims: bool = False) -> tf.Tensor:
    """sum(x) over `axes`, returned in x's dtype, with float32 rounding only within blocks of
    at most 16 terms: the partial sums are added in float64.

    Why: a float32 reduction of n terms can be off by up to n * 2^-24 of their magnitude, and
    TensorFlow's CPU reductions come close to that on large same-sign sums (2^16 values near
    1e4 give a mean off by units: tests/test_core_numerics.py, test_sums_accumulate_in_float64).
    Statistics built from such sums inherit the error. Here the error is at most ~16 * 2^-24
    of the terms' magnitude, whatever n.

    How: one reduced axis of size s with a divisor b in [4, 16] is viewed as [b, s / b] (a free
    reshape) and summed over b in float32 (float32 for float16/bfloat16 input too), then the
    s / b-times smaller partial sums are cast to float64 and summed over the rest: as cheap as a
    plain float32 sum, where casting all of x to float64 first would cost a full extra pass.
    Without such an axis (or with unknown sizes) all of x is summed in float64. float64 input is
    summed as it is.
    """
    axes = sorted(axes)
    if x.dtype == tf.float64:
        return tf.reduce_sum(x, axis=axes, keepdims=keepdims)
    plan = _block(x.shape, axes)
    if plan is None:
        total = tf.reduce_sum(tf.cast(x, tf.float64), axis=axes, keepdims=keepdims)
        return tf.cast(total, x.dtype)
    axis, block = plan
    dims = [x.shape[a] if x.shape[a] is not None else tf.shape(x)[a] for a in range(x.shape.rank)]
    split = dims[:axis] + [block, dims[axis] // block] + dims[axis + 1 :]
    wide = x if x.dtype == tf.float32 else tf.cast(x, tf.float32)
    partial = tf.reduce_sum(tf.reshape(wide, split), axis=axis)
    total = tf.reduce_sum(tf.cast(partial, tf.float64), axis=axes, keepdims=keepdims)
    return tf.cast(total, x.dtype)


def from_shifted_sums(m0: tf.Tensor, sum_d: tf.Tensor, sum_d2: tf.Tensor, n: tf.Tensor):
    """(mean, biased variance) from the sums of d = x - m0 and of d^2 over n values:

        c = sum_d / n;  mean = m0 + c;  variance = max(sum_d2 / n - c^2, 0)

    Exact for any shift m0; the choice of m0 only sets how much the subtraction amplifies the
    sums' rounding (1 + (mean - m0)^2 / var). Shared by moments (m0 = the mean, c its rounding
    error), cross_replica_moments (m0 = the global mean) and the closed form's one-pass
    statistics (m0 = a subset's mean). The max guards against a rounding-negative variance.
    """
    c = sum_d / n
    variance = tf.maximum(sum_d2 / n - tf.square(c), tf.zeros([], sum_d2.dtype))
    return m0 + c, variance


def moments(
    x: tf.Tensor, axes: Sequence[int], keepdims: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and biased variance of `x` over `axes`: the corrected two-pass algorithm.

        m0       = sum(x) / n                        first pass
        d        = x - m0;  c = sum(d) / n           second pass (c is m0's rounding error)
        mean     = m0 + c
        variance = sum(d^2) / n - c^2               (biased: divides by n, not n - 1)

    Not the one-pass E[x^2] - E[x]^2: in float32 that loses the variance entirely once
    |mean| / std reaches ~1e3 (catastrophic cancellation), and x + 1e4 is an ordinary input
    (unnormalized pixels, a drifting feature). The correction c (Chan, Golub & LeVeque 1983)
    removes the error the rounded m0 would otherwise add (m0's error, squared, relative to the
    variance: large at a large offset). The sums are sum_accurately's (float32 blocks of <= 16
    terms, then float64): with plain float32 sums the same algorithm loses the variance on 2^16
    values per channel near 1e4 (tests/test_core_numerics.py).

    Args:
        x: float16, bfloat16, float32 or float64 tensor.
        axes: the axes to reduce, non-negative.
        keepdims: keep the reduced axes with size 1.

    Returns:
        (mean, variance), in float64 for float64 input and float32 otherwise.
    """
    x = tf.cast(x, _checks.stats_dtype(x.dtype))
    n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    m0 = sum_accurately(x, axes, keepdims=True) / n
    d = x - m0
    mean, variance = from_shifted_sums(
        m0,
        sum_accurately(d, axes, keepdims=True),
        sum_accurately(tf.square(d), axes, keepdims=True),
        n,
    )
    if not keepdims:
        mean = tf.squeeze(mean, axis=axes)
        variance = tf.squeeze(variance, axis=axes)
    return mean, variance


def normalize(
    x: tf.Tensor,
    mean: tf.Tensor,
    variance: tf.Tensor,
    gamma: tf.Tensor | None,
    beta: tf.Tensor | None,
    eps: float,
) -> tf.Tensor:
    """Computes `(x - mean) * rsqrt(variance + eps) * gamma + beta` in the statistics' dtype.

    eps sits inside the square root, as in every built-in. `x - mean` is formed before scaling
    (not `x * scale + (beta - mean * scale)`), so a large common offset cancels exactly instead
    of leaving a rounding error of |mean| * 2^-24 in the output.

    Args:
        x: the input; cast to the dtype of `mean` for the arithmetic.
        mean, variance: broadcastable to `x`.
        gamma, beta: broadcastable to `x`, or None for no scale / no offset.
        eps: > 0.

    Returns:
        The normalized tensor in `x`'s dtype.
    """
    dtype = mean.dtype
    scale = tf.math.rsqrt(variance + tf.constant(eps, dtype))
    if gamma is not None:
        scale = scale * tf.cast(gamma, dtype)
    y = (tf.cast(x, dtype) - mean) * scale
    if beta is not None:
        y = y + tf.cast(beta, dtype)
    return tf.cast(y, x.dtype)
