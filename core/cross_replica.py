"""Synchronized (cross-replica) batch statistics under tf.distribute, exact and numerically safe.

Under `tf.distribute` each replica sees a slice of the global batch. Synchronized batch norm
(Keras `BatchNormalization(synchronized=True)`, PyTorch `SyncBatchNorm`, Sonnet
`CrossReplicaBatchNorm`) normalizes with the statistics of the whole global batch instead of
each slice's. Keras all-reduces sum(x), sum(x^2) and the count and forms the one-pass
E[x^2] - E[x]^2, which in float32 loses the variance once |mean| / std reaches ~1e3. Here the
corrected two-pass algorithm of core.stats.moments runs over the global batch, each pass's sums
all-reduced, so no E[x^2] is ever formed.

The all-reduces are `tf.distribute.ReplicaContext.all_reduce(SUM, ...)`, which is
differentiable: its gradient is the all-reduce SUM of the incoming gradients. The gradient each
replica gets for its slice is therefore that of the sum of every replica's loss, which is what
a data-parallel step computes when each replica's loss is divided by the global batch size.

Only batch norm needs this: layer, group and RMS norm take statistics per example, and weight
norm per output unit of a (mirrored) kernel, so each replica already computes what one device
would.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from normlab.core import _checks
from normlab.core.batch_norm import batch_norm_and_moments
from normlab.core.stats import from_shifted_sums, moments, normalize, sum_accurately

_SUM = tf.distribute.ReduceOp.SUM


def _canonical_axes(axes: Sequence[int], rank: int) -> list[int]:
    """`axes` as sorted non-negative ints, or a ValueError naming the bad value."""
    if isinstance(axes, int):
        axes = [axes]
    canonical = []
    for axis in axes:
        if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank:
            raise ValueError(
                f"axes must be ints in [-{rank}, {rank}) for x of rank {rank}, got {axes!r}."
            )
        canonical.append(axis % rank)
    if len(set(canonical)) != len(canonical) or not canonical:
        raise ValueError(f"axes must be distinct and non-empty, got {axes!r}.")
    return sorted(canonical)


def _replica_context(replica_context):
    """The given replica context, else the current one (None in a cross-replica context)."""
    if replica_context is not None:
        return replica_context
    return tf.distribute.get_replica_context()


def cross_replica_moments(
    x: tf.Tensor,
    axes: Sequence[int],
    replica_context: tf.distribute.ReplicaContext | None = None,
    *,
    keepdims: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and biased variance of `x` over `axes` and over every replica's `x`.

    core.moments' corrected two-pass algorithm with every sum taken over the global batch:
    replica i holds x_i, reduces it over `axes` (core.stats.sum_accurately), and two
    all-reduce SUMs combine the replicas (n_i elements on replica i, n in all):

        n        = sum_i n_i
        m0       = sum_i sum(x_i) / n               first all-reduce: (n_i, sum(x_i))
        d_i      = x_i - m0                         on each replica
        c        = sum_i sum(d_i) / n               second all-reduce: (sum(d_i), sum(d_i^2))
        mean     = m0 + c
        variance = max(sum_i sum(d_i^2) / n - c^2, 0)          (biased, like core.moments)

    No sum of squares of x itself is formed: x - m0 cancels a large common offset exactly, and
    c removes m0's rounding error (c^2 is second order), so the result is as accurate as
    core.moments on the whole batch on one device, even at a large offset where Keras'
    synchronized E[x^2] - E[x]^2 loses the variance entirely (tests/distributed_check.py
    measures both; BUILD_NOTES.md, "Numerics", has the numbers).

    Why not Chan, Golub & LeVeque's pairwise combination of per-replica (n_i, m_i, M2_i),
    M2 = sum_i [M2_i + n_i (m_i - mean)^2]: it is exact in exact arithmetic, but each m_i
    rounded to float32 is off by up to ulp(|mean|) / 2, and that error enters M2 at first
    order through the replicas' mean differences (tests/distributed_check.py measures it). A
    shared first-pass mean m0 has no such term.

    m0's gradient is stopped: mean and variance do not depend on it (d mean / d m0 =
    1 - 1 = 0, d variance / d m0 = -2c + 2c = 0), so this is exact and leaves the backward pass
    one all-reduce, that of (sum(d_i), sum(d_i^2)).

    A replica with no elements (an uneven last batch) contributes zero sums and a zero count.
    A global batch with no elements gives NaN (0 / 0), as core.moments does.

    With one replica in sync (no strategy, the default replica context, or a strategy over one
    device) the result is exactly `core.moments(x, axes)`, with no all-reduce. In a
    cross-replica context (inside `strategy.scope()` but outside `strategy.run`), `x` is the
    whole batch and its local moments are returned likewise.

    Args:
        x: this replica's slice, float16, bfloat16, float32 or float64; statistics in float32
            (float64 for float64). Every replica must reduce the same axes and have the same
            shape outside `axes` (the channel axis of batch norm).
        axes: the axes to reduce; negative values count from the end.
        replica_context: the context to all-reduce in; default
            `tf.distribute.get_replica_context()`.
        keepdims: keep the reduced axes with size 1.

    Returns:
        (mean, variance), identical on every replica, float32 (float64 for float64 input).

    Raises:
        TypeError: a non-floating x.
        ValueError: x of unknown rank, or bad axes.
    """
    x = _checks.as_float_tensor(x, "x")
    axes = _canonical_axes(axes, x.shape.rank)
    context = _replica_context(replica_context)
    if context is None or context.num_replicas_in_sync == 1:
        return moments(x, axes, keepdims=keepdims)

    x = tf.cast(x, _checks.stats_dtype(x.dtype))
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    total, x_sum = context.all_reduce(_SUM, (count, sum_accurately(x, axes, keepdims=True)))
    m0 = tf.stop_gradient(x_sum / total)
    d = x - m0
    d_sum, d_square_sum = context.all_reduce(
        _SUM,
        (
            sum_accurately(d, axes, keepdims=True),
            sum_accurately(tf.square(d), axes, keepdims=True),
        ),
    )
    mean, variance = from_shifted_sums(m0, d_sum, d_square_sum, total)
    if not keepdims:
        mean = tf.squeeze(mean, axis=axes)
        variance = tf.squeeze(variance, axis=axes)
    return mean, variance


def sync_batch_norm_and_moments(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    eps: float = 1e-3,
    replica_context: tf.distribute.ReplicaContext | None = None,
    *,
    backward: str = "closed_form",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode batch norm with the statistics of the global batch (all replicas).

    Reduces over every axis but the last (the channel axis) and over the replicas:

        mean, var = cross_replica_moments(x, axes)    (biased; see its docstring for the formulas)
        y         = (x - mean) * rsqrt(var + eps) * gamma + beta

    Gradients flow through mean and var, and through the all-reduces to the other replicas'
    inputs: for per-replica losses L_r, replica r's gradients are those of sum_r L_r, so with
    each L_r a sum over its examples divided by the global batch size, the all-reduced SUM of
    the replicas' gradients equals single-device batch norm's gradient on the whole batch.
    The backward pass is TensorFlow's autodiff through these basic ops and the all-reduces.

    With one replica in sync (no strategy, a one-device strategy, or a cross-replica context,
    where x is the whole batch) this is `core.batch_norm_and_moments(x, gamma, beta, eps,
    backward=backward)`.

    Args:
        x: this replica's [N, ..., C] slice, float16, bfloat16, float32 or float64; statistics
            in float32 (float64 for float64 input), y in x's dtype.
        gamma, beta: [C], any float dtype (float32 under mixed precision).
        eps: > 0, added to the variance inside the root. Default 1e-3 as in Keras.
        replica_context: as in `cross_replica_moments`.
        backward: with one replica, the backward pass of `core.batch_norm_and_moments`
            ("closed_form" or "autodiff"); several replicas always use autodiff through the
            all-reduces.

    Returns:
        (y, mean, variance); mean and variance are [C] in the statistics' dtype and the same on
        every replica: a module updating its moving statistics from them should stop their
        gradient.

    Raises:
        TypeError: a non-floating input.
        ValueError: rank < 2, gamma/beta not [C], eps <= 0, or, with one replica, a single
            value per channel ([1, C] input), whose variance is 0 by construction so y would
            equal beta. (On several replicas a [1, C] slice is accepted: the global batch has
            one value per replica.)
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    channels = x.shape[-1]
    gamma = _checks.as_float_tensor(gamma, "gamma")
    beta = _checks.as_float_tensor(beta, "beta")
    _checks.check_param(gamma, "gamma", [tf.TensorShape([channels])], "one scale per channel")
    _checks.check_param(beta, "beta", [tf.TensorShape([channels])], "one offset per channel")
    eps = _checks.check_eps(eps)
    context = _replica_context(replica_context)
    if context is None or context.num_replicas_in_sync == 1:
        # The local batch is the global batch: the unsynchronized function, with its faster
        # backward pass and its refusal of one value per channel.
        return batch_norm_and_moments(x, gamma, beta, eps, backward=backward)
    # On several replicas a [1, C] slice is fine: the global batch has one value per replica.
    axes = list(range(x.shape.rank - 1))
    mean, variance = cross_replica_moments(x, axes, context)
    return normalize(x, mean, variance, gamma, beta, eps), mean, variance
