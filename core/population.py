"""Population statistics from per-batch moments: precise batch norm (Wu & Johnson 2021).

Precise BN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, section 3.1)
replaces the moving averages, whose early terms were computed with older weights, by the
statistics of many training batches run through the final, fixed weights in training mode.
These are pure functions that combine per-batch (mean, biased variance, count) into the mean
and biased variance of all the values the batches held: the exact pooled statistics, which for
batches of equal size are

    mean     = average over batches of mean_B
    variance = average over batches of var_B  +  the (biased) variance of the mean_B

(the law of total variance). They are merged as Chan, Golub & LeVeque (1979) merge partial
results, in float64, so no E[x^2] - E[x]^2 cancellation occurs at a large mean.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class Moments(NamedTuple):
    """Running pooled statistics: the number of values, their mean, and m2, the sum of their
    squared deviations from that mean (variance = m2 / count). All float64, mean and m2 of the
    statistics' shape ([C], or [T, C] for per-time-step statistics)."""

    count: tf.Tensor
    mean: tf.Tensor
    m2: tf.Tensor


def empty(shape) -> Moments:
    """Moments of no values, for statistics of `shape`."""
    zeros = tf.zeros(shape, tf.float64)
    return Moments(tf.zeros([], tf.float64), zeros, zeros)


def merge(state: Moments, mean: tf.Tensor, variance: tf.Tensor, count) -> Moments:
    """Adds one batch's statistics: its mean, its biased variance, and the number of values
    each statistic was computed over (N for [N, C], N*H*W for [N, H, W, C]).

        n'   = n + n_B
        d    = mean_B - mean
        mean' = mean + d * n_B / n'
        m2'  = m2 + var_B * n_B + d^2 * n * n_B / n'

    The inputs are cast to float64 first. With n = 0 the result is the batch's statistics.
    """
    n_b = tf.cast(count, tf.float64)
    mean_b = tf.cast(mean, tf.float64)
    var_b = tf.cast(variance, tf.float64)
    total = state.count + n_b
    delta = mean_b - state.mean
    new_mean = state.mean + delta * (n_b / total)
    m2 = state.m2 + var_b * n_b + tf.square(delta) * (state.count * n_b / total)
    return Moments(total, new_mean, m2)


def finalize(state: Moments, dtype: tf.DType = tf.float32) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean, biased variance = m2 / count) of every value merged, cast to `dtype` (float32,
    the moving statistics' dtype, by default).

    Raises:
        tf.errors.InvalidArgumentError: nothing was merged.
    """
    tf.debugging.assert_positive(state.count, "population statistics of no batch")
    return tf.cast(state.mean, dtype), tf.cast(state.m2 / state.count, dtype)


def population_moments(means, variances, counts, dtype: tf.DType = tf.float32):
    """(mean, biased variance) of the values of several batches, from each batch's mean,
    biased variance and count (sequences of equal length): `merge` over them, then `finalize`.
    """
    if not len(means) == len(variances) == len(counts) or not means:
        raise ValueError(
            "population_moments needs one mean, variance and count per batch, at least one "
            f"batch; got {len(means)}, {len(variances)} and {len(counts)}"
        )
    state = empty(tf.shape(means[0]))
    for mean, variance, count in zip(means, variances, counts):
        state = merge(state, mean, variance, count)
    return finalize(state, dtype)
