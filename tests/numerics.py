"""Per-dtype tolerances for comparing against float64 references, and their reasoning.

A normalization's output is O(1) (|y| is a few standard deviations), so its error is measured
against max|reference|. The unit roundoff u = 2^-p of the output dtype (p the significand bits)
bounds the error of rounding one result to that dtype: u * |y|.

* float16 / bfloat16: the statistics are computed in float32, so the output's error is that
  one final rounding; we allow 2u (u for the rounding, u for float32 arithmetic and the rounding
  of dy, both far smaller, with margin).
* float32 / float64: the error accumulates over reductions of n ~ 1e3-1e5 terms (TensorFlow
  sums pairwise/blocked, error ~ u log n, worst case u n); we allow 64u (3.8e-6 in float32),
  well below anything a bug would produce (a wrong eps or axis gives >= 1e-4).
"""

import numpy as np
import tensorflow as tf

UNIT_ROUNDOFF = {
    tf.float64: 2.0**-53,
    tf.float32: 2.0**-24,
    tf.float16: 2.0**-11,
    tf.bfloat16: 2.0**-8,
}

ALL_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def tolerance(dtype: tf.DType) -> float:
    """Allowed max |result - reference| / max |reference| for results in `dtype`."""
    factor = 2.0 if dtype in (tf.float16, tf.bfloat16) else 64.0
    return factor * UNIT_ROUNDOFF[dtype]


def assert_close(actual, reference, dtype: tf.DType, what: str = "") -> None:
    """Asserts max|actual - reference| <= tolerance(dtype) * max|reference|."""
    actual = np.asarray(tf.cast(actual, tf.float64))
    reference = np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (what, actual.shape, reference.shape)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    scale = max(np.max(np.abs(reference)), 1e-30)
    err = np.max(np.abs(actual - reference)) / scale
    assert err <= tolerance(dtype), (
        f"{what}: max rel error {err:.3g} > {tolerance(dtype):.3g} for {dtype.name}"
    )


def quantized(array, dtype: tf.DType) -> tuple[tf.Tensor, np.ndarray]:
    """`array` cast to `dtype`, and the very same values in float64 for the reference."""
    t = tf.cast(tf.constant(array, tf.float64), dtype)
    return t, np.asarray(tf.cast(t, tf.float64))
