"""Synchronized batch norm with one replica (this process): it must be plain batch norm.

The multi-replica behaviour needs logical devices configured before TensorFlow starts, so it
runs in a subprocess: tests/test_distributed.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from normlab import core
from normlab.core import builtin_sync
from normlab.core import registry
from normlab.models import BatchNorm, make_norm
from normlab.core import reference as ref
from tests.numerics import ALL_DTYPES, assert_close, quantized

EPS = 1e-3


def _stats_dtype(dtype: tf.DType) -> tf.DType:
    return tf.float64 if dtype == tf.float64 else tf.float32


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize(
    "shape,axes", [((16, 12), [0]), ((8, 5, 5, 6), [0, 1, 2]), ((4, 3, 7), [0, -1])], ids=str
)
def test_moments_outside_a_strategy_match_numpy(shape, axes, dtype):
    """The default replica context has one replica: the moments of x itself, against NumPy
    float64 on the same values (not against core.moments, which this path calls)."""
    x, x64 = quantized(np.random.default_rng(0).normal(0.7, 1.9, shape), dtype)
    canonical = tuple(sorted(a % len(shape) for a in axes))
    for keepdims in (False, True):
        mean, var = core.cross_replica_moments(x, axes, keepdims=keepdims)
        assert mean.dtype == var.dtype == _stats_dtype(dtype)
        assert_close(mean, x64.mean(axis=canonical, keepdims=keepdims), _stats_dtype(dtype))
        assert_close(var, x64.var(axis=canonical, keepdims=keepdims), _stats_dtype(dtype))


def test_moments_with_an_explicit_context_and_a_one_device_strategy():
    x, x64 = quantized(np.random.default_rng(1).normal(size=(6, 4)), tf.float32)
    mean, var = core.cross_replica_moments(x, [0], tf.distribute.get_replica_context())
    assert_close(mean, x64.mean(0), tf.float32)
    assert_close(var, x64.var(0), tf.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    mean, var = strategy.run(tf.function(lambda a: core.cross_replica_moments(a, [0])), args=(x,))
    assert_close(mean, x64.mean(0), tf.float32)
    assert_close(var, x64.var(0), tf.float32)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_sync_batch_norm_outside_a_strategy_is_batch_norm(dtype):
    rng = np.random.default_rng(2)
    x, x64 = quantized(rng.normal(0.7, 1.9, (8, 5, 5, 6)), dtype)
    param_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    gamma = tf.constant(rng.normal(1.0, 0.3, 6), param_dtype)
    beta = tf.constant(rng.normal(0.0, 0.3, 6), param_dtype)
    dy, dy64 = quantized(rng.normal(size=x.shape), dtype)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y, mean, var = core.sync_batch_norm_and_moments(x, gamma, beta, EPS)
    dx, dgamma, dbeta = tape.gradient(y, [x, gamma, beta], output_gradients=dy)
    y1, mean1, var1 = core.batch_norm_and_moments(x, gamma, beta, EPS)
    assert y.dtype == dtype and mean.dtype == var.dtype == param_dtype
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(mean, mean1)
    np.testing.assert_array_equal(var, var1)
    assert_close(y, ref.batch_norm(x64, np.asarray(gamma), np.asarray(beta), EPS), dtype, "y")
    rdx, rdgamma, rdbeta = ref.batch_norm_grads(x64, np.asarray(gamma, np.float64), EPS, dy64)
    assert_close(dx, rdx, dtype, "dx")
    assert_close(dgamma, rdgamma, param_dtype, "dgamma")
    assert_close(dbeta, rdbeta, param_dtype, "dbeta")


def test_bad_arguments_are_named():
    x = tf.zeros([4, 6])
    with pytest.raises(TypeError, match="floating-point"):
        core.cross_replica_moments(tf.zeros([4, 6], tf.int32), [0])
    with pytest.raises(ValueError, match="axes must be ints"):
        core.cross_replica_moments(x, [2])
    with pytest.raises(ValueError, match="distinct"):
        core.cross_replica_moments(x, [0, -2])
    with pytest.raises(ValueError, match="gamma has shape"):
        core.sync_batch_norm_and_moments(x, tf.ones([5]), tf.zeros([6]))
    with pytest.raises(ValueError, match="eps must be > 0"):
        core.sync_batch_norm_and_moments(x, tf.ones([6]), tf.zeros([6]), 0.0)
    # One value per channel on one replica: the variance is 0 whatever x is.
    with pytest.raises(ValueError, match="one value per channel"):
        core.sync_batch_norm_and_moments(tf.ones([1, 6]), tf.ones([6]), tf.zeros([6]))
    with pytest.raises(TypeError, match="synchronized must be True or False"):
        BatchNorm(6, synchronized="yes")


def test_keras_sync_outside_a_strategy_matches_custom_on_ordinary_data():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0.5, 2.0, (16, 4, 4, 6)), tf.float32)
    gamma = tf.constant(rng.normal(1.0, 0.3, 6), tf.float32)
    beta = tf.constant(rng.normal(0.0, 0.3, 6), tf.float32)
    dy = tf.constant(rng.normal(size=x.shape), tf.float32)
    results = []
    for fn in (core.sync_batch_norm_and_moments, builtin_sync.batch_norm_and_moments_keras_sync):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y, mean, var = fn(x, gamma, beta, EPS)
        results.append((y, mean, var, *tape.gradient(y, [x, gamma, beta], output_gradients=dy)))
    for name, a, b in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"), *results):
        assert_close(a, b, tf.float32, name)
    # float16 in, float16 out, float32 statistics, as the custom function.
    y, mean, _ = builtin_sync.batch_norm_and_moments_keras_sync(tf.cast(x, tf.float16), gamma, beta)
    assert y.dtype == tf.float16 and mean.dtype == tf.float32


def test_keras_sync_loses_the_variance_at_a_large_offset():
    """Keras' synchronized path is one-pass even on one replica; ours is two-pass."""
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(0.0, 1.0, (64, 8, 8, 4)) + 1e4, tf.float32)
    exact = np.asarray(x, np.float64).var(axis=(0, 1, 2))
    ones, zeros = tf.ones([4]), tf.zeros([4])
    _, _, ours = core.sync_batch_norm_and_moments(x, ones, zeros)
    _, _, keras = builtin_sync.batch_norm_and_moments_keras_sync(x, ones, zeros)
    np.testing.assert_allclose(ours, exact, rtol=1e-5)
    assert np.max(np.abs(np.asarray(keras) - exact) / exact) > 0.1


@pytest.mark.parametrize("impl", registry.IMPLS)
def test_sync_batch_norm_module_outside_a_strategy_is_unchanged(impl):
    x = tf.constant(np.random.default_rng(5).normal(2.0, 3.0, (32, 3, 3, 4)), tf.float32)
    norm = registry.NORMS["batch"]
    plain, synced = (
        make_norm(norm, 4, impl=impl, momentum=0.9, synchronized=False),
        make_norm(norm, 4, impl=impl, momentum=0.9, synchronized=True),
    )
    np.testing.assert_allclose(synced(x, training=True), plain(x, training=True), atol=1e-5)
    for a, b in (
        (synced.moving_mean, plain.moving_mean),
        (synced.moving_variance, plain.moving_variance),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(synced(x, training=False), plain(x, training=False), atol=1e-5)
    assert synced.moving_mean.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    assert plain.moving_mean.aggregation == tf.VariableAggregation.MEAN
    assert {v.name for v in synced.variables} == {v.name for v in plain.variables}
