"""core/ against the independent NumPy float64 references, forward and backward, every dtype."""

import numpy as np
import pytest
import tensorflow as tf

from normlab import core
from normlab.core import reference as ref
from tests.numerics import ALL_DTYPES, assert_close, quantized

SHAPES = [(16, 12), (8, 5, 5, 6), (4, 3, 7, 7, 4)]  # dense, NHWC, 5-D
EPS = 1e-3


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, x64 = quantized(rng.normal(0.7, 1.9, shape), dtype)
    param_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    gamma64 = rng.normal(1.0, 0.3, shape[-1])
    beta64 = rng.normal(0.0, 0.3, shape[-1])
    dy, dy64 = quantized(rng.normal(size=shape), dtype)
    return (
        x,
        x64,
        tf.constant(gamma64, param_dtype),
        gamma64,
        tf.constant(beta64, param_dtype),
        beta64,
        dy,
        dy64,
    )


def _grads(fn, dy, *args):
    with tf.GradientTape() as tape:
        tape.watch(args)
        y = fn(*args)
    return y, tape.gradient(y, args, output_gradients=dy)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_matches_reference(shape, dtype):
    x, x64, gamma, gamma64, beta, beta64, dy, dy64 = _inputs(shape, dtype)
    y, (dx, dgamma, dbeta) = _grads(
        lambda a, g, b: core.batch_norm(a, g, b, EPS), dy, x, gamma, beta
    )
    assert y.dtype == dtype
    assert_close(y, ref.batch_norm(x64, gamma64, beta64, EPS), dtype, "y")
    rdx, rdgamma, rdbeta = ref.batch_norm_grads(x64, gamma64, EPS, dy64)
    assert_close(dx, rdx, dtype, "dx")
    # dgamma/dbeta are float32 sums of float32 products: float32's tolerance.
    assert_close(dgamma, rdgamma, gamma.dtype, "dgamma")
    assert_close(dbeta, rdbeta, beta.dtype, "dbeta")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_matches_reference(shape, dtype):
    x, x64, gamma, gamma64, beta, beta64, dy, dy64 = _inputs(shape, dtype)
    y, (dx, dgamma, dbeta) = _grads(
        lambda a, g, b: core.layer_norm(a, g, b, EPS), dy, x, gamma, beta
    )
    assert y.dtype == dtype
    assert_close(y, ref.layer_norm(x64, gamma64, beta64, EPS), dtype, "y")
    rdx, rdgamma, rdbeta = ref.layer_norm_grads(x64, gamma64, EPS, dy64)
    assert_close(dx, rdx, dtype, "dx")
    assert_close(dgamma, rdgamma, gamma.dtype, "dgamma")
    assert_close(dbeta, rdbeta, beta.dtype, "dbeta")


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
def test_layer_norm_full_shape_params(dtype):
    rng = np.random.default_rng(3)
    shape = (6, 4, 4, 3)
    x, x64 = quantized(rng.normal(size=shape), dtype)
    gamma64, beta64 = rng.normal(1, 0.3, shape[1:]), rng.normal(0, 0.3, shape[1:])
    y = core.layer_norm(x, tf.constant(gamma64, dtype), tf.constant(beta64, dtype), EPS)
    assert_close(y, ref.layer_norm(x64, gamma64, beta64, EPS), dtype, "y")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize(
    "shape,groups",
    [((16, 12), 3), ((8, 5, 5, 6), 2), ((8, 5, 5, 6), 6), ((8, 5, 5, 6), 1)],
    ids=str,
)
def test_group_norm_matches_reference(shape, groups, dtype):
    x, x64, gamma, gamma64, beta, beta64, dy, dy64 = _inputs(shape, dtype)
    y, (dx, dgamma, dbeta) = _grads(
        lambda a, g, b: core.group_norm(a, g, b, groups, EPS), dy, x, gamma, beta
    )
    assert y.dtype == dtype
    assert_close(y, ref.group_norm(x64, gamma64, beta64, groups, EPS), dtype, "y")
    rdx, rdgamma, rdbeta = ref.group_norm_grads(x64, gamma64, groups, EPS, dy64)
    assert_close(dx, rdx, dtype, "dx")
    assert_close(dgamma, rdgamma, gamma.dtype, "dgamma")
    assert_close(dbeta, rdbeta, beta.dtype, "dbeta")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm_matches_reference(shape, dtype):
    x, x64, gamma, gamma64, _, _, _, _ = _inputs(shape, dtype)
    y = core.rms_norm(x, gamma, 1e-6)
    assert y.dtype == dtype
    assert_close(y, ref.rms_norm(x64, gamma64, 1e-6), dtype, "y")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(20, 7), (3, 3, 4, 5)], ids=str)
def test_weight_norm_matches_reference(shape, dtype):
    rng = np.random.default_rng(5)
    v, v64 = quantized(rng.normal(size=shape), dtype)
    g64 = rng.uniform(0.5, 2.0, shape[-1])
    g = tf.constant(g64, tf.float64 if dtype == tf.float64 else tf.float32)
    dw, dw64 = quantized(rng.normal(size=shape), dtype)
    w, (dv, dg) = _grads(core.weight_norm, dw, v, g)
    assert w.dtype == dtype
    assert_close(w, ref.weight_norm(v64, g64), dtype, "w")
    rdv, rdg = ref.weight_norm_grads(v64, g64, dw64)
    assert_close(dv, rdv, dtype, "dv")
    assert_close(dg, rdg, g.dtype, "dg")


def test_weight_norm_gives_each_unit_length_g():
    rng = np.random.default_rng(6)
    v = tf.constant(rng.normal(size=(3, 3, 8, 5)), tf.float64)
    g = tf.constant([0.5, 1.0, 2.0, 3.0, -1.5], tf.float64)
    w = core.weight_norm(v, g)
    norms = tf.sqrt(tf.reduce_sum(tf.square(w), axis=[0, 1, 2]))
    np.testing.assert_allclose(norms, np.abs(g), rtol=1e-12)
    # Default init g = ||v|| reproduces v: the network starts as without weight norm.
    np.testing.assert_allclose(core.weight_norm(v, core.kernel_norm(v)), v, rtol=1e-12)


@pytest.mark.parametrize("name", ["batch", "layer", "group", "weight"])
def test_numeric_gradients_float64(name):
    """Autodiff gradients against central finite differences (tf.test.compute_gradient)."""
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(0.3, 1.5, (4, 3, 3, 4)), tf.float64)
    gamma = tf.constant(rng.normal(1, 0.3, 4), tf.float64)
    beta = tf.constant(rng.normal(0, 0.3, 4), tf.float64)
    fns = {
        "batch": (lambda a, g, b: core.batch_norm(a, g, b, EPS), [x, gamma, beta]),
        "layer": (lambda a, g, b: core.layer_norm(a, g, b, EPS), [x, gamma, beta]),
        "group": (lambda a, g, b: core.group_norm(a, g, b, 2, EPS), [x, gamma, beta]),
        "weight": (core.weight_norm, [x, gamma]),
    }
    fn, args = fns[name]
    theoretical, numerical = tf.test.compute_gradient(fn, args)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["batch", "layer", "group"])
def test_output_is_standardized(name):
    """With gamma = 1, beta = 0 every normalized slice has mean 0 and variance var/(var+eps)."""
    rng = np.random.default_rng(8)
    x = tf.constant(rng.normal(3.0, 5.0, (32, 6, 6, 8)), tf.float32)
    ones, zeros = tf.ones([8]), tf.zeros([8])
    if name == "batch":
        y, axes = core.batch_norm(x, ones, zeros, 1e-5), (0, 1, 2)
        y = np.asarray(y)
    elif name == "layer":
        y, axes = np.asarray(core.layer_norm(x, ones, zeros, 1e-5)), (1, 2, 3)
    else:
        y = np.asarray(core.group_norm(x, ones, zeros, 4, 1e-5)).reshape(32, 6, 6, 4, 2)
        axes = (1, 2, 4)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=axes), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["function", "jit"])
def test_eager_equals_compiled(mode):
    rng = np.random.default_rng(9)
    x = tf.constant(rng.normal(size=(8, 5, 5, 6)), tf.float32)
    gamma = tf.constant(rng.normal(1, 0.3, 6), tf.float32)
    beta = tf.constant(rng.normal(0, 0.3, 6), tf.float32)
    v = tf.constant(rng.normal(size=(3, 3, 6, 4)), tf.float32)
    g = tf.constant(rng.uniform(0.5, 2, 4), tf.float32)

    def everything(x, gamma, beta, v, g):
        return (
            core.batch_norm(x, gamma, beta),
            core.layer_norm(x, gamma, beta),
            core.group_norm(x, gamma, beta, 3),
            core.rms_norm(x, gamma),
            core.weight_norm(v, g),
        )

    compiled = tf.function(everything, jit_compile=(mode == "jit"))
    for eager, graph in zip(everything(x, gamma, beta, v, g), compiled(x, gamma, beta, v, g)):
        # XLA may fuse and reorder float32 arithmetic: equal to rounding, not bitwise.
        np.testing.assert_allclose(graph, eager, rtol=0, atol=4e-6)
