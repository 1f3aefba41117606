"""Standardize-then-affine with a closed-form backward: the fast path of batch, layer, group
and RMS norm.

Batch, layer and group norm are one primitive: standardize x over some axes with per-slice mean
and variance, then scale and shift by gamma and beta, which vary along other axes (RMS norm is
the same primitive with mean = 0, var = mean(x^2) and beta = 0: `center=False`):

    mean, var = moments(x, axes)                     (shifted one-pass, bounded error: _moments)
    xhat      = (x - mean) * r,   r = rsqrt(var + eps)
    y         = xhat * gamma + beta

Its backward pass, with n the number of elements per slice, dxhat = dy * gamma and the means
over the normalized axes:

    dx     = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
             + dmean / n + dvar * 2 * (x - mean) / n            (gradients into mean and var)
    dgamma = sum(dy * xhat),   dbeta = sum(dy)                   (over the axes gamma/beta span)

is written here with basic ops and attached with `tf.custom_gradient`, instead of letting
autodiff differentiate the forward op by op. What makes it fast (each choice is compared with
its alternative by `python -m bench.ops`; bench/README.md has the measurements):

* Forward and backward of an image-shaped input (rank >= 3, at least 2^16 elements) each run
  as one XLA-compiled function (`tf.function(jit_compile=True)`): a few fused loops over memory
  instead of one TensorFlow kernel, and one full-size temporary, per op. Smaller inputs, and
  every [N, C] input (dense layers, an LSTM's gates, whose reductions are short), run the same
  functions uncompiled: there the XLA launch costs more than fusion saves.
* Only x (which the caller holds anyway) and the per-slice mean and r are kept for the backward
  pass; x - mean is recomputed inside the backward's loops rather than stored.
* Adjacent axes with the same role (normalized or not; gamma / beta varying or broadcast) are
  merged by a free reshape: batch norm on [N, H, W, C] runs on [N*H*W, C], layer norm on
  [N, H*W, C], group norm on [N, H*W, G, C/G]; XLA's CPU reductions are much faster there than
  over (0, 1, 2) of [N, H, W, C].
* Sums of full-size expressions are taken in short blocks that XLA fuses with the expression
  (`_sum`, which is also what makes them accurate), and sums over the same data are stacked
  into one reduction (`_sums`).
* One pass for the statistics: sum(x - m0) and sum((x - m0)^2) with m0 the mean of 1/16 of
  each slice, whose error is provably at most 16x that of the sums (`_moments`), instead of a
  first full pass for m0. Forward: one pass over x for the statistics, one writing y.
  Backward: one pass over x and dy for sum(dy) and sum(dy * (x - mean)), one writing dx.

Second-order gradients are not supported: the backward pass uses the forward's statistics as
constants, so differentiating it would silently miss terms; it raises instead. Use
`backward="autodiff"` for gradients of gradients.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import tensorflow as tf

from normlab.core import _checks, stats

# The values of the `backward` argument of batch_norm, layer_norm and group_norm.
BACKWARDS = ("closed_form", "autodiff")


def check_backward(backward) -> str:
    """Returns `backward` if it is one of BACKWARDS, else raises ValueError naming the choices."""
    if not isinstance(backward, str) or backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}.")
    return backward


def _sum(p: tf.Tensor, axes: Sequence[int]) -> tf.Tensor:
    """sum(p) over `axes`, keeping them (size 1), in p's dtype: stats.sum_accurately.

    Its blocks (partial sums of at most 16 terms of one axis, then float64) also matter for
    speed here: XLA's CPU backend writes an elementwise expression out to memory before a long
    reduction of it (then reads it back); a short reduction it fuses with the expression, so
    the only full-size pass is the one reading the inputs. The cast to float64 keeps XLA from
    merging the two reductions back into one.
    """
    return stats.sum_accurately(p, axes, keepdims=True)


def _sums(ps: Sequence[tf.Tensor], axes: Sequence[int], stacked: bool) -> list[tf.Tensor]:
    """[_sum(p, axes) for p in ps], for same-shape ps, in one reduction when stacked.

    Stacked along a new last axis, the sums are one reduction, which XLA computes in one loop
    over the inputs instead of one loop per sum. Unfused (not compiled), stacking
    would only add a copy.
    """
    if not stacked or len(ps) == 1:
        return [_sum(p, axes) for p in ps]
    return tf.unstack(_sum(tf.stack(ps, axis=-1), axes), axis=-1)


# The shift of the one-pass statistics is the mean of the first 1/_SHIFT_FRACTION of each slice
# (rounded up): it costs 1/16 of a pass over x and bounds the cancellation (see _moments).
_SHIFT_FRACTION = 16


def _shift(x: tf.Tensor, axes: Sequence[int]) -> tf.Tensor:
    """The mean of the first ceil(s / 16) entries of x along its first reduced axis (of size s),
    over all of the other reduced axes: a subset of at least 1/16 of every slice. Kept dims."""
    axis = min(axes)
    size = _dim(x, axis)
    count = (size + _SHIFT_FRACTION - 1) // _SHIFT_FRACTION
    rank = x.shape.rank
    subset = tf.slice(x, [0] * rank, [count if a == axis else -1 for a in range(rank)])
    return tf.reduce_mean(subset, axis=list(axes), keepdims=True)


def _moments(x: tf.Tensor, axes: Sequence[int], compiled: bool, two_pass: bool):
    """Mean and biased variance over `axes` (kept, size 1), in float32 (float64 for float64).

    Shifted one-pass statistics, with the shift m0 computed from a subset S holding a fraction
    f >= 1/16 of each slice (_shift); one pass over x then gives both sums:

        d = x - m0;  c = sum(d) / n;  mean = m0 + c;  var = sum(d^2) / n - c^2

    The identity is exact for any m0; only the cancellation in the last subtraction depends on
    it, amplifying the sums' rounding by mean(d^2) / var = 1 + (mean - m0)^2 / var. With m0 the
    mean of S and R the rest, mean - m0 = (1 - f)(mean_R - mean_S) and, by the between-group
    term of the variance, var >= f (1 - f)(mean_R - mean_S)^2, so the amplification is at most
    1 / f <= 16 whatever the data (an outlier subset, a large offset): a bounded constant,
    unlike E[x^2] - E[x]^2 (m0 = 0), whose amplification grows with (mean / std)^2. For
    typical data mean_S is close to the mean and the amplification close to 1. This saves one
    of the forward's three passes over x (tests/test_core_closed_form.py checks the bound on
    adversarial data).

    two_pass: instead the corrected two-pass algorithm of core.stats.moments (m0 = the mean
    of all of x, one more full pass), kept for the benchmark's comparison.
    """
    x = tf.cast(x, _checks.stats_dtype(x.dtype))
    n = _count(x, axes, x.dtype)
    if two_pass:
        m0 = _sum(x, axes) / n
    else:
        m0 = _shift(x, axes)
    d = x - m0
    sum_d, sum_d2 = _sums([d, tf.square(d)], axes, stacked=compiled)
    return stats.from_shifted_sums(m0, sum_d, sum_d2, n)


def _mean_square(x: tf.Tensor, axes: Sequence[int], compiled: bool):
    """(0, mean(x^2)) over `axes` (kept, size 1): RMS norm's statistics, as a zero mean and a
    "variance" about zero, in float32 (float64 for float64). No cancellation: a plain sum."""
    x = tf.cast(x, _checks.stats_dtype(x.dtype))
    (sum_x2,) = _sums([tf.square(x)], axes, stacked=compiled)
    mean_square = sum_x2 / _count(x, axes, x.dtype)
    return tf.zeros_like(mean_square), mean_square


def _forward(x, gamma, beta, axes, eps, compiled, two_pass, center):
    """y, mean, var, r on the merged layout; mean, var and r keep the reduced axes (size 1)."""
    if center:
        mean, variance = _moments(x, axes, compiled=compiled, two_pass=two_pass)
    else:
        mean, variance = _mean_square(x, axes, compiled)
    dtype = mean.dtype
    inv_std = tf.math.rsqrt(variance + tf.constant(eps, dtype))
    # As core.stats.normalize: x - mean before scaling, so a large offset cancels exactly.
    y = (tf.cast(x, dtype) - mean) * (inv_std * tf.cast(gamma, dtype)) + tf.cast(beta, dtype)
    return tf.cast(y, x.dtype), mean, variance, inv_std


def _backward(
    x, gamma, beta, mean, inv_std, dy, dmean, dvar, axes, gamma_axes, beta_axes, compiled, center
):
    """((dx, dgamma, dbeta), coefficients) on the merged layout, in x's, gamma's, beta's dtypes.

    center=False (RMS norm): the mean is the constant 0, so dx loses the mean(dxhat) term and
    no gradient flows into the mean.

    gamma_axes / beta_axes are the axes along which gamma / beta are broadcast (size 1). The
    normalized axes split into `inner` ones, along which gamma is constant (all of them for
    batch norm, the spatial ones for layer/group norm), and `outer` ones, along which it varies
    (the channels of layer/group norm). Sums over `inner` are shared by dgamma, dbeta and dx;
    only those partial sums, never full-size products, are reduced over the other axes.
    """
    dtype = mean.dtype
    centered = tf.cast(x, dtype) - mean  # x - mean, recomputed rather than kept from the forward
    dy = tf.cast(dy, dtype)
    g = tf.cast(gamma, dtype)
    n = _count(x, axes, dtype)
    inner = [a for a in axes if a in gamma_axes]
    outer = [a for a in axes if a not in gamma_axes]

    def total(p, over):
        return _sum(p, over) if over else p

    if inner:
        sum_dy, sum_dy_centered = _sums([dy, dy * centered], inner, compiled)
    else:
        sum_dy, sum_dy_centered = dy, dy * centered
    # sum(dy * xhat) over inner; r is constant there, so it multiplies the partial sum.
    sum_dy_xhat = sum_dy_centered * inv_std
    dgamma = total(sum_dy_xhat, [a for a in gamma_axes if a not in inner])
    if set(beta_axes) >= set(inner):
        dbeta = total(sum_dy, [a for a in beta_axes if a not in inner])
    else:  # beta varies along an axis gamma does not (layer norm with [C] gamma, full beta)
        dbeta = total(dy, beta_axes)

    # mean(dxhat) and mean(dxhat * xhat) over the normalized axes, per slice.
    mean_dxhat = total(sum_dy * g, outer) / n
    mean_dxhat_xhat = total(sum_dy_xhat * g, outer) / n
    # dx = r * (dy * gamma - mean_dxhat - xhat * mean_dxhat_xhat) + dmean / n + 2 dvar (x-mean) / n
    # as one fused expression a * dy + b * (x - mean) + c with small per-slice coefficients.
    a = inv_std * g
    b = -tf.square(inv_std) * mean_dxhat_xhat
    if dvar is not None:
        b = b + 2.0 * tf.cast(dvar, dtype) / n
    if center:
        c = -inv_std * mean_dxhat
        if dmean is not None:
            c = c + tf.cast(dmean, dtype) / n
    else:
        c = tf.zeros([], dtype)
    dx = a * dy + b * centered + c
    grads = (tf.cast(dx, x.dtype), tf.cast(dgamma, gamma.dtype), tf.cast(dbeta, beta.dtype))
    # a, b, c are returned (and dropped by the caller) only so that XLA computes them once:
    # otherwise it fuses their arithmetic, float64 sums included, into the loop over dx and
    # repeats it for every element.
    return grads, (a, b, c)


@functools.lru_cache(maxsize=None)
def _xla(fn, signature: tuple):
    """`fn` as an XLA-compiled tf.function, one per static input signature.

    _sum needs static shapes, so each shape gets its own trace (and XLA compilation) anyway;
    a separate tf.function per signature (wrapping a distinct functools.partial) says so to
    TensorFlow, which would otherwise warn about frequent retracing when many shapes are used.
    """
    del signature  # only the cache key
    return tf.function(functools.partial(fn), jit_compile=True, autograph=False)


def _count(x: tf.Tensor, axes: Sequence[int], dtype: tf.DType):
    """The number of elements per slice (the product of x's `axes`), as a constant when static:
    fewer ops per call, which is most of the cost on small tensors."""
    sizes = [x.shape[a] for a in axes]
    if all(size is not None for size in sizes):
        return tf.constant(float(math.prod(sizes)), dtype)
    return tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), dtype)


def _reshape(t: tf.Tensor, shape) -> tf.Tensor:
    """tf.reshape, skipped when t already has that static shape (one op fewer per call)."""
    if isinstance(shape, (list, tuple, tf.TensorShape)) and all(isinstance(s, int) for s in shape):
        if t.shape.is_fully_defined() and t.shape.as_list() == list(shape):
            return t
    return tf.reshape(t, shape)


def _dim(x: tf.Tensor, axis: int):
    """x.shape[axis] as a Python int when known at trace time, else as a scalar tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def _merged_layout(x: tf.Tensor, gamma_rank: int, beta_rank: int, axes: Sequence[int]):
    """Groups adjacent axes of x that play the same role, for a free reshape.

    An axis' role is (normalized?, gamma varies along it?, beta varies along it?); gamma and beta
    span x's trailing gamma_rank / beta_rank axes. Returns the merged shape and, for each merged
    axis, its role.

    A group whose size is unknown at trace time (it holds the batch axis when Keras' model.fit
    traces with a batch of unknown size) is split as [size / b, b], b the largest divisor of at
    most 16 of its known part (b >= 4; H * W for the batch axis of an image batch): the blocked
    sums of stats.sum_accurately need a reduced axis of static size, and without one they would
    sum all of x in float64, several times slower than the blocked float32 sums.
    """
    rank = x.shape.rank
    groups = []  # [role, size (an int, or a scalar tensor if unknown), product of known sizes]
    for axis in range(rank):
        role = (axis in axes, axis >= rank - gamma_rank, axis >= rank - beta_rank)
        known = x.shape[axis] if x.shape[axis] is not None else 1
        if groups and groups[-1][0] == role:
            groups[-1][1] = groups[-1][1] * _dim(x, axis)
            groups[-1][2] *= known
        else:
            groups.append([role, _dim(x, axis), known])
    shape, roles = [], []
    for role, size, known in groups:
        block = max(d for d in range(1, stats._MAX_BLOCK + 1) if known % d == 0)
        if isinstance(size, int) or block < 4:
            shape.append(size)
            roles.append(role)
        else:
            shape += [size // block, block]
            roles += [role, role]
    return shape, roles


# Below this many elements, XLA's per-call launch cost is as large as what fusion saves, and
# compiling each new shape takes a noticeable fraction of a second.
_MIN_COMPILED_ELEMENTS = 2**16


@tf.custom_gradient
def _first_order_only(dx, dgamma, dbeta):
    """Identity on the closed-form gradients; differentiating them again raises."""

    def grad(*_):
        raise NotImplementedError(
            "second-order gradients through the closed-form backward pass are not supported "
            "(it treats the batch statistics as constants, so they would be wrong); call the "
            'norm with backward="autodiff".'
        )

    return (tf.identity(dx), tf.identity(dgamma), tf.identity(dbeta)), grad


def standardize(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    axes: Sequence[int],
    eps: float,
    *,
    compiled: bool | None = None,
    two_pass: bool = False,
    center: bool = True,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(x - mean) * rsqrt(var + eps) * gamma + beta` over `axes`, with a closed-form gradient.

    Args:
        x: float16, bfloat16, float32 or float64, any rank; statistics and all backward
            arithmetic in float32 (float64 for float64 x).
        gamma, beta: shaped like trailing axes of x (e.g. [C] or x.shape[1:]; [G, C/G] for the
            grouped view of group norm), broadcast along the leading ones; any float dtype.
        axes: the normalized axes, non-negative.
        eps: > 0, inside the root.
        compiled: run forward and backward as XLA-compiled functions (True) or as plain
            TensorFlow ops (False); None (default) compiles an x of rank >= 3 with at least
            2^16 elements (or a size unknown at trace time).
        two_pass: the corrected two-pass statistics of core.stats.moments instead of the
            default shifted one-pass ones (see _moments; for the benchmark's comparison).
        center: False for RMS norm: mean = 0 and variance = mean(x^2) (the same primitive
            without centering; pass zeros as beta).

    Returns:
        (y, mean, variance): y in x's dtype; mean and variance keep the reduced axes (size 1),
        in the statistics' dtype. Gradients flowing into mean and variance are handled exactly;
        the gradients have the dtypes of x, gamma and beta.
    """
    rank = x.shape.rank
    if compiled is None:
        size = x.shape.num_elements()
        compiled = rank >= 3 and (size is None or size >= _MIN_COMPILED_ELEMENTS)
    merged_shape, roles = _merged_layout(x, gamma.shape.rank, beta.shape.rank, axes)
    merged_axes = tuple(i for i, role in enumerate(roles) if role[0])
    gamma_axes = tuple(i for i, role in enumerate(roles) if not role[1])
    beta_axes = tuple(i for i, role in enumerate(roles) if not role[2])
    xm = _reshape(x, merged_shape)
    gm = _reshape(gamma, [1 if a in gamma_axes else s for a, s in enumerate(merged_shape)])
    bm = _reshape(beta, [1 if a in beta_axes else s for a, s in enumerate(merged_shape)])
    forward, backward = _forward, _backward
    if compiled:
        signature = (
            tuple(xm.shape.as_list()),
            xm.dtype,
            gm.dtype,
            bm.dtype,
            merged_axes,
            eps,
            two_pass,
            center,
        )
        forward, backward = _xla(_forward, signature), _xla(_backward, signature)

    @tf.custom_gradient
    def primitive(xm, gm, bm):
        # stop_gradient: the tape must not record the forward call itself (its gradient is
        # `grad` below). Otherwise TensorFlow runs a variant of the compiled function that also
        # outputs the intermediates its own autodiff would need: a full-size x - m0 here.
        inputs = [tf.stop_gradient(t) for t in (xm, gm, bm)]
        y, mean, variance, inv_std = forward(*inputs, merged_axes, eps, compiled, two_pass, center)

        def grad(dy, dmean, dvar):
            grads, _ = backward(
                xm,
                gm,
                bm,
                mean,
                inv_std,
                dy,
                dmean,
                dvar,
                merged_axes,
                gamma_axes,
                beta_axes,
                compiled,
                center,
            )
            return _first_order_only(*grads)

        return (y, mean, variance), grad

    y, mean, variance = primitive(xm, gm, bm)
    stats_shape = [1 if a in axes else _dim(x, a) for a in range(rank)]
    return (
        _reshape(y, x.shape if x.shape.is_fully_defined() else tf.shape(x)),
        _reshape(mean, stats_shape),
        _reshape(variance, stats_shape),
    )
