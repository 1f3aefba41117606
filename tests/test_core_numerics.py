"""The numerical pitfalls: large offsets, half precision, batch of one, zero directions."""

import numpy as np
import pytest
import tensorflow as tf

from normlab import core
from normlab.core import reference as ref
from tests.numerics import tolerance


def test_variance_survives_a_large_offset():
    """x + 1e4 in float32: a one-pass E[x^2] - E[x]^2 loses the variance; two-pass does not."""
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, (64, 8, 8, 4))
    x = tf.constant(base + 1e4, tf.float32)
    x64 = np.asarray(x, np.float64)  # the float32 values exactly
    _, mean, var = core.batch_norm_and_moments(x, tf.ones([4]), tf.zeros([4]))
    # The float32 policy (64 ulp; measured 6e-8): an unbiased variance (n - 1) would be off by
    # 1 / 4095 = 2.4e-4 here and fail.
    np.testing.assert_allclose(var, x64.var(axis=(0, 1, 2)), rtol=tolerance(tf.float32))
    # The one-pass formula on the same float32 data is far off: the test can tell them apart.
    one_pass = tf.reduce_mean(tf.square(x), axis=[0, 1, 2]) - tf.square(
        tf.reduce_mean(x, axis=[0, 1, 2])
    )
    assert np.max(np.abs(one_pass - x64.var(axis=(0, 1, 2)))) > 0.1
    # The output too: x - mean is formed before scaling.
    y = core.batch_norm(x, tf.ones([4]), tf.zeros([4]))
    np.testing.assert_allclose(y, ref.batch_norm(x64, 1.0, 0.0, 1e-3), atol=2e-3)
    y = core.layer_norm(x, tf.ones([4]), tf.zeros([4]))
    np.testing.assert_allclose(y, ref.layer_norm(x64, 1.0, 0.0, 1e-3), atol=2e-3)
    y = core.group_norm(x, tf.ones([4]), tf.zeros([4]), 2)
    np.testing.assert_allclose(y, ref.group_norm(x64, 1.0, 0.0, 2, 1e-3), atol=2e-3)


def test_sums_accumulate_in_float64():
    """2^16 values per channel, 1e4 and 1e4 + 1: TensorFlow's float32 reduce_sum is off by
    ~1e-3 relative, enough to wreck even the corrected two-pass variance; core.moments, whose
    sums add float32 blocks of <= 16 terms in float64 (sum_accurately), is exact to float32
    rounding."""
    x = np.full((256, 16, 16, 4), 1e4, np.float32)
    x[:16] += 1.0
    x = tf.constant(x)
    x64 = np.asarray(x, np.float64)
    true_var = x64.var(axis=(0, 1, 2))
    _, var = core.moments(x, [0, 1, 2])
    np.testing.assert_allclose(var, true_var, rtol=1e-6)
    float32_sum = np.asarray(tf.reduce_sum(x, axis=[0, 1, 2]), np.float64)
    assert np.max(np.abs(float32_sum - x64.sum(axis=(0, 1, 2))) / x64.sum(axis=(0, 1, 2))) > 1e-4
    # The same algorithm with plain float32 sums is far off: the accurate sums are what helps.
    n = x64[..., 0].size
    m0 = tf.reduce_sum(x, axis=[0, 1, 2]) / n
    d = x - m0
    c = tf.reduce_sum(d, axis=[0, 1, 2]) / n
    float32_var = tf.reduce_sum(tf.square(d), axis=[0, 1, 2]) / n - tf.square(c)
    assert np.max(np.abs(float32_var - true_var) / true_var) > 0.1


@pytest.mark.parametrize(
    "shape,axes,path",
    [
        ((256, 16, 16, 4), [0, 1, 2], "blocks of 16 along axis 0"),
        ((13, 17, 5), [0, 1], "blocks of 13 along axis 0"),
        ((17, 19, 3), [0, 1], "no divisor in [4, 16]: all in float64"),
        ((None, 16, 4), [0, 1], "size unknown at trace time: blocks along axis 1"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_sum_accurately(shape, axes, path):
    """Every path of core.stats.sum_accurately is within a few float32 ulps of the exact sum,
    for values near 1e4 where a float32 reduce_sum of 2^16 of them is off by ~1e-4."""
    static = [s if s is not None else 64 for s in shape]
    x = tf.constant(np.random.default_rng(7).normal(1e4, 1.0, static), tf.float32)
    exact = np.asarray(x, np.float64).sum(axis=tuple(axes))
    fn = tf.function(
        lambda t: core.stats.sum_accurately(t, axes),
        input_signature=[tf.TensorSpec(shape, tf.float32)],
    )
    got = fn(x)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=2e-7)
    half = core.stats.sum_accurately(tf.cast(x[..., :1], tf.bfloat16), axes)
    assert half.dtype == tf.bfloat16


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=lambda d: d.name)
def test_half_precision_in_the_hundreds(dtype):
    """|x| ~ 300: x^2 overflows float16 (max 65504); statistics in float32 do not."""
    rng = np.random.default_rng(1)
    x = tf.cast(rng.normal(300.0, 50.0, (16, 6, 6, 4)), dtype)
    x64 = np.asarray(tf.cast(x, tf.float64))
    assert not np.all(np.isfinite(np.asarray(tf.square(tf.cast(x, tf.float16)))))
    gamma, beta = tf.ones([4], tf.float32), tf.zeros([4], tf.float32)
    unit = 2.0**-11 if dtype == tf.float16 else 2.0**-8
    for name, y, expected in [
        ("batch", core.batch_norm(x, gamma, beta), ref.batch_norm(x64, 1.0, 0.0, 1e-3)),
        ("layer", core.layer_norm(x, gamma, beta), ref.layer_norm(x64, 1.0, 0.0, 1e-3)),
        ("group", core.group_norm(x, gamma, beta, 2), ref.group_norm(x64, 1.0, 0.0, 2, 1e-3)),
        ("rms", core.rms_norm(x, gamma), ref.rms_norm(x64, 1.0, 1e-6)),
    ]:
        assert y.dtype == dtype, name
        y = np.asarray(tf.cast(y, tf.float64))
        assert np.all(np.isfinite(y)), name
        np.testing.assert_allclose(
            y, expected, atol=2 * unit * np.max(np.abs(expected)), err_msg=name
        )
    _, mean, var = core.batch_norm_and_moments(x, gamma, beta)
    assert mean.dtype == tf.float32 and var.dtype == tf.float32


def test_batch_of_one():
    rng = np.random.default_rng(2)
    one_image = tf.constant(rng.normal(size=(1, 5, 5, 3)), tf.float32)
    ones, zeros = tf.ones([3]), tf.zeros([3])
    # Layer norm is defined for one example.
    y = core.layer_norm(one_image, ones, zeros)
    np.testing.assert_allclose(
        y, ref.layer_norm(np.asarray(one_image, np.float64), 1, 0, 1e-3), atol=1e-5
    )
    # Batch norm over an image still has 25 positions per channel.
    y = core.batch_norm(one_image, ones, zeros)
    np.testing.assert_allclose(
        y, ref.batch_norm(np.asarray(one_image, np.float64), 1, 0, 1e-3), atol=1e-5
    )
    # Batch norm on [1, C] has one value per channel: refused, with the reason.
    with pytest.raises(ValueError, match="one value per channel"):
        core.batch_norm(tf.ones([1, 3]), ones, zeros)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16], ids=lambda d: d.name)
def test_zero_direction_has_finite_values_and_gradients(dtype):
    v = tf.Variable(tf.cast(tf.concat([tf.zeros([4, 1]), tf.ones([4, 1])], axis=1), dtype))
    g = tf.Variable([1.0, 2.0])
    # The zero column's gradient is dw * g / sqrt(floor): 2^14 g dw for float16 (documented),
    # finite while |g dw| < 4; these cotangents stay below that.
    dw = tf.cast(tf.linspace(0.5, 1.0, 8)[:, None][:4] * tf.ones([1, 2]), dtype)
    with tf.GradientTape() as tape:
        w = core.weight_norm(v, g)
    dv, dg = tape.gradient(w, [v, g], output_gradients=dw)
    for t in (w, dv, dg):
        assert np.all(np.isfinite(np.asarray(tf.cast(t, tf.float32))))
    np.testing.assert_array_equal(np.asarray(tf.cast(w, tf.float32))[:, 0], 0.0)
    np.testing.assert_allclose(np.asarray(tf.cast(w, tf.float32))[:, 1], 1.0, rtol=1e-3)
    # Without the float16 floor the same gradient overflows (1e6 g dw > 65504): the floor matters.
    if dtype == tf.float16:
        assert not np.all(np.isfinite(np.asarray(tf.cast(dw * 1e6, tf.float16))))


def test_data_dependent_init_standardizes_preactivations():
    """Salimans & Kingma sec. 3: after init, g * t + b has zero mean and unit variance."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0.5, 2.0, (256, 20)), tf.float32)
    v = tf.constant(rng.normal(0.0, 0.05, (20, 7)), tf.float32)
    t = x @ core.weight_norm(v, tf.ones([7]))
    g, b = core.data_dependent_init(t)
    y = np.asarray(x @ core.weight_norm(v, g) + b)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-5)
    g2, _ = core.data_dependent_init(t, init_scale=0.1)
    np.testing.assert_allclose(g2, 0.1 * np.asarray(g), rtol=1e-6)


def test_moving_average_update_is_keras_convention():
    moving = tf.constant([1.0, 2.0, 3.0])
    batch = tf.constant([2.0, 0.0, 3.0], tf.float64)
    new = core.moving_average_update(moving, batch, 0.9)
    assert new.dtype == tf.float32
    np.testing.assert_allclose(new, [1.1, 1.8, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(core.moving_average_update(moving, batch, 0.0), batch)
    with pytest.raises(ValueError, match="momentum"):
        core.moving_average_update(moving, batch, 1.0)


def test_inference_form_uses_the_given_statistics():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(10, 3)), tf.float32)
    mean, var = tf.constant([0.5, -1.0, 2.0]), tf.constant([4.0, 0.25, 1.0])
    gamma, beta = tf.constant([1.0, 2.0, 0.5]), tf.constant([0.0, 1.0, -1.0])
    y = core.batch_norm_inference(x, mean, var, gamma, beta, 1e-3)
    expected = (np.asarray(x) - mean) / np.sqrt(np.asarray(var) + 1e-3) * gamma + beta
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # Training mode on the same batch uses the batch's statistics instead: different output.
    assert np.max(np.abs(core.batch_norm(x, gamma, beta) - y)) > 0.1
