"""The closed-form backward pass (core.closed_form) against autodiff and the NumPy references.

Every test runs both ways the closed form executes: XLA-compiled (the default from 2^16
elements) and as plain TensorFlow ops (below that); the `path` fixture forces one or the other
so that small test tensors exercise both.
"""

import numpy as np
import pytest
import tensorflow as tf

from normlab import core
from normlab.core import closed_form
from normlab.core import reference as ref
from tests.numerics import ALL_DTYPES, assert_close, quantized, tolerance

EPS = 1e-3
# Closed form vs autodiff in float64: both are exact formulas, so they differ by rounding only.
FLOAT64_RTOL = 1e-12


@pytest.fixture(params=["compiled", "uncompiled"])
def path(request, monkeypatch):
    """Forces the XLA-compiled or the uncompiled closed form, whatever the tensor's size."""
    threshold = 0 if request.param == "compiled" else 2**62
    monkeypatch.setattr(closed_form, "_MIN_COMPILED_ELEMENTS", threshold)
    return request.param


def _norm(name, backward, groups=None):
    """fn(x, gamma, beta) for one norm and one backward pass."""
    if name == "batch":
        return lambda x, g, b: core.batch_norm(x, g, b, EPS, backward=backward)
    if name == "layer":
        return lambda x, g, b: core.layer_norm(x, g, b, EPS, backward=backward)
    return lambda x, g, b: core.group_norm(x, g, b, groups, EPS, backward=backward)


def _value_and_grads(fn, dy, *args):
    with tf.GradientTape() as tape:
        tape.watch(args)
        y = fn(*args)
    return [y] + tape.gradient(y, list(args), output_gradients=dy)


def _assert_rel(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(np.max(np.abs(expected)), 1.0)  # 1.0: some degenerate gradients are exactly 0
    err = np.max(np.abs(actual - expected)) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.3g}"


def _float64_inputs(shape, seed=0, param_shape=None):
    rng = np.random.default_rng(seed)
    param_shape = param_shape or shape[-1:]
    return (
        tf.constant(rng.normal(0.7, 1.9, shape)),
        tf.constant(rng.normal(1.0, 0.3, param_shape)),
        tf.constant(rng.normal(0.0, 0.3, param_shape)),
        tf.constant(rng.normal(size=shape)),
    )


CASES = [
    ("batch", (16, 12), None),
    ("batch", (8, 5, 5, 6), None),
    ("batch", (4, 3, 7, 7, 4), None),
    ("batch", (2, 3), None),  # two values per channel
    ("layer", (16, 12), None),
    ("layer", (8, 5, 5, 6), None),
    ("layer", (4, 3, 7, 7, 4), None),
    ("group", (16, 12), 3),
    ("group", (8, 5, 5, 6), 1),
    ("group", (8, 5, 5, 6), 2),
    ("group", (8, 5, 5, 6), 6),  # instance norm
    ("group", (4, 3, 7, 7, 4), 2),
]


@pytest.mark.parametrize("name,shape,groups", CASES, ids=str)
def test_matches_autodiff_in_float64(name, shape, groups, path):
    x, gamma, beta, dy = _float64_inputs(shape)
    closed = _value_and_grads(_norm(name, "closed_form", groups), dy, x, gamma, beta)
    auto = _value_and_grads(_norm(name, "autodiff", groups), dy, x, gamma, beta)
    for what, c, a in zip(["y", "dx", "dgamma", "dbeta"], closed, auto):
        _assert_rel(c, a, FLOAT64_RTOL, f"{name} {shape} {what}")


@pytest.mark.parametrize("param_shapes", ["full", "full gamma", "full beta"])
def test_layer_norm_full_shape_params_match_autodiff(param_shapes, path):
    """Layer norm's gamma/beta may each be [C] or the full per-example shape."""
    shape = (6, 4, 4, 3)
    x, _, _, dy = _float64_inputs(shape)
    rng = np.random.default_rng(1)
    full = {"full": (True, True), "full gamma": (True, False), "full beta": (False, True)}
    gamma_full, beta_full = full[param_shapes]
    gamma = tf.constant(rng.normal(1, 0.3, shape[1:] if gamma_full else shape[-1:]))
    beta = tf.constant(rng.normal(0, 0.3, shape[1:] if beta_full else shape[-1:]))
    closed = _value_and_grads(_norm("layer", "closed_form"), dy, x, gamma, beta)
    auto = _value_and_grads(_norm("layer", "autodiff"), dy, x, gamma, beta)
    for what, c, a in zip(["y", "dx", "dgamma", "dbeta"], closed, auto):
        _assert_rel(c, a, FLOAT64_RTOL, f"{param_shapes} {what}")


@pytest.mark.parametrize("shape", [(16, 5), (6, 4, 4, 5)], ids=str)
def test_gradients_into_mean_and_variance(shape, path):
    """batch_norm_and_moments' mean/var outputs: d mean/dx = 1/n, d var/dx = 2 (x - mean)/n."""
    x, gamma, beta, dy = _float64_inputs(shape)
    rng = np.random.default_rng(2)
    dmean = tf.constant(rng.normal(size=shape[-1]))
    dvar = tf.constant(rng.normal(size=shape[-1]))

    def grads(backward, cotangents):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            outputs = core.batch_norm_and_moments(x, gamma, beta, EPS, backward=backward)
            objective = sum(tf.reduce_sum(o * c) for o, c in zip(outputs, cotangents))
        return tape.gradient(objective, [x, gamma, beta])

    zeros = tf.zeros_like(dy)
    for cotangents in [(dy, dmean, dvar), (zeros, dmean, 0.0 * dvar), (zeros, 0.0 * dmean, dvar)]:
        closed, auto = grads("closed_form", cotangents), grads("autodiff", cotangents)
        for what, c, a in zip(["dx", "dgamma", "dbeta"], closed, auto):
            _assert_rel(c, a, FLOAT64_RTOL, what)

    # And against the formula itself, with no gradient through y.
    axes = tuple(range(len(shape) - 1))
    xn = np.asarray(x)
    n = xn.size // shape[-1]
    expected = np.asarray(dmean) / n + np.asarray(dvar) * 2 * (xn - xn.mean(axis=axes)) / n
    _assert_rel(grads("closed_form", (zeros, dmean, dvar))[0], expected, FLOAT64_RTOL, "formula")


def _dtype_inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, x64 = quantized(rng.normal(0.7, 1.9, shape), dtype)
    dy, dy64 = quantized(rng.normal(size=shape), dtype)
    param_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    gamma64, beta64 = rng.normal(1.0, 0.3, shape[-1]), rng.normal(0.0, 0.3, shape[-1])
    gamma, beta = tf.constant(gamma64, param_dtype), tf.constant(beta64, param_dtype)
    return x, x64, gamma, gamma64, beta, beta64, dy, dy64


# The closed form on both of its paths (XLA-compiled and plain); autodiff has one path.
BACKWARD_PATHS = [
    ("closed_form", "compiled"),
    ("closed_form", "uncompiled"),
    ("autodiff", "uncompiled"),
]


@pytest.mark.parametrize("backward,path", BACKWARD_PATHS, indirect=["path"], ids=str)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("name,shape,groups", [CASES[1], CASES[5], CASES[9]], ids=str)
def test_every_dtype_matches_reference(name, shape, groups, dtype, backward, path):
    """Both backward passes against the NumPy float64 references, with tests/numerics.py's
    per-dtype tolerances (test_core_reference.py runs the default only)."""
    x, x64, gamma, gamma64, beta, beta64, dy, dy64 = _dtype_inputs(shape, dtype)
    y, dx, dgamma, dbeta = _value_and_grads(_norm(name, backward, groups), dy, x, gamma, beta)
    if name == "batch":
        expected_y = ref.batch_norm(x64, gamma64, beta64, EPS)
        expected = ref.batch_norm_grads(x64, gamma64, EPS, dy64)
    elif name == "layer":
        expected_y = ref.layer_norm(x64, gamma64, beta64, EPS)
        expected = ref.layer_norm_grads(x64, gamma64, EPS, dy64)
    else:
        expected_y = ref.group_norm(x64, gamma64, beta64, groups, EPS)
        expected = ref.group_norm_grads(x64, gamma64, groups, EPS, dy64)
    assert (y.dtype, dx.dtype, dgamma.dtype, dbeta.dtype) == (dtype, dtype, gamma.dtype, beta.dtype)
    assert_close(y, expected_y, dtype, "y")
    assert_close(dx, expected[0], dtype, "dx")
    assert_close(dgamma, expected[1], gamma.dtype, "dgamma")
    assert_close(dbeta, expected[2], beta.dtype, "dbeta")


RMS_SHAPES = [(16, 12), (2, 3), (8, 5, 5, 6), (4, 3, 7, 7, 4)]


def _rms_value_and_grads(backward, dy, x, gamma):
    with tf.GradientTape() as tape:
        tape.watch([x, gamma])
        y = core.rms_norm(x, gamma, EPS, backward=backward)
    return [y] + tape.gradient(y, [x, gamma], output_gradients=dy)


@pytest.mark.parametrize("full_gamma", [False, True], ids=["gamma [C]", "gamma x.shape[1:]"])
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=str)
def test_rms_norm_matches_autodiff_in_float64(shape, full_gamma, path):
    """RMS norm's closed form (the primitive with center=False) against autodiff."""
    x, gamma, _, dy = _float64_inputs(shape, param_shape=shape[1:] if full_gamma else None)
    closed = _rms_value_and_grads("closed_form", dy, x, gamma)
    auto = _rms_value_and_grads("autodiff", dy, x, gamma)
    for what, c, a in zip(["y", "dx", "dgamma"], closed, auto):
        _assert_rel(c, a, FLOAT64_RTOL, f"rms {shape} {what}")


@pytest.mark.parametrize("backward,path", BACKWARD_PATHS, indirect=["path"], ids=str)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_rms_norm_every_dtype_matches_reference(dtype, backward, path):
    x, x64, gamma, gamma64, _, _, dy, dy64 = _dtype_inputs((8, 5, 5, 6), dtype)
    y, dx, dgamma = _rms_value_and_grads(backward, dy, x, gamma)
    expected_dx, expected_dgamma = ref.rms_norm_grads(x64, gamma64, EPS, dy64)
    assert (y.dtype, dx.dtype, dgamma.dtype) == (dtype, dtype, gamma.dtype)
    assert_close(y, ref.rms_norm(x64, gamma64, EPS), dtype, "y")
    assert_close(dx, expected_dx, dtype, "dx")
    assert_close(dgamma, expected_dgamma, gamma.dtype, "dgamma")


def test_half_precision_parameters_keep_their_dtype(path):
    """float16 gamma/beta get float16 gradients; the arithmetic is float32 all the same."""
    x, x64, _, gamma64, _, beta64, dy, dy64 = _dtype_inputs((8, 5, 5, 6), tf.bfloat16)
    gamma, beta = tf.constant(gamma64, tf.float16), tf.constant(beta64, tf.float16)
    _, dx, dgamma, dbeta = _value_and_grads(_norm("batch", "closed_form"), dy, x, gamma, beta)
    assert (dx.dtype, dgamma.dtype, dbeta.dtype) == (tf.bfloat16, tf.float16, tf.float16)
    gamma64 = np.asarray(tf.cast(gamma, tf.float64))
    rdx, rdgamma, rdbeta = ref.batch_norm_grads(x64, gamma64, EPS, dy64)
    assert_close(dx, rdx, tf.bfloat16, "dx")
    assert_close(dgamma, rdgamma, tf.float16, "dgamma")
    assert_close(dbeta, rdbeta, tf.float16, "dbeta")


def test_large_offset(path):
    """x + 1e4 in float32: statistics, output and gradients stay accurate (two-pass moments,
    x - mean formed before scaling, in the backward pass too)."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0.0, 1.0, (64, 8, 8, 4)) + 1e4, tf.float32)
    dy = tf.constant(rng.normal(size=(64, 8, 8, 4)), tf.float32)
    x64, dy64 = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    gamma, beta = tf.ones([4]), tf.zeros([4])
    _, mean, var = core.batch_norm_and_moments(x, gamma, beta)
    np.testing.assert_allclose(var, x64.var(axis=(0, 1, 2)), rtol=tolerance(tf.float32))
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 1, 2)), rtol=1e-7)
    # The mean is a float32 near 1e4, so it carries up to half an ulp (2^-11) of rounding, and
    # x - mean, xhat, y and the gradients inherit it (std 1): an ulp of 1e4, 2^-10, bounds
    # their error (measured: y 5.3e-4 abs, dx 7.2e-5 and dgamma 3.6e-4 relative).
    bound = 2.0**-10
    for name in ("batch", "layer", "group"):
        y, dx, dgamma, _ = _value_and_grads(_norm(name, "closed_form", 2), dy, x, gamma, beta)
        if name == "batch":
            expected_y, expected = ref.batch_norm(x64, 1, 0, EPS), ref.batch_norm_grads
        elif name == "layer":
            expected_y, expected = ref.layer_norm(x64, 1, 0, EPS), ref.layer_norm_grads
        else:
            expected_y = ref.group_norm(x64, 1, 0, 2, EPS)

            def expected(x, g, e, d):
                return ref.group_norm_grads(x, g, 2, e, d)

        rdx, rdgamma, _ = expected(x64, np.ones(4), EPS, dy64)
        np.testing.assert_allclose(y, expected_y, rtol=0, atol=bound, err_msg=name)
        _assert_rel(dx, rdx, bound, f"{name} dx")
        _assert_rel(dgamma, rdgamma, bound, f"{name} dgamma")


def _adversarial_batches():
    """float32 batches [256, 16, 16, 4] (2^16 values per channel) built against the one-pass
    statistics' shift, the mean of the first 1/16 of each channel (the first 16 images)."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 1.0, (256, 16, 16, 4))
    offset = noise + 1e4
    outlier_subset = noise + 1e4
    outlier_subset[:16] += 1e3
    two_constants = np.full(noise.shape, 1e4)  # the bound's worst case: (mean - m0)^2/var = 15
    two_constants[:16] += 1.0
    tiny_rest = noise * 1e-3 + 1e4
    tiny_rest[:16] += 5.0
    return {
        "offset 1e4": offset,
        "first 1/16 +1e3": outlier_subset,
        "two constants": two_constants,
        "outlier subset, tiny rest": tiny_rest,
    }


@pytest.mark.parametrize("case", list(_adversarial_batches()))
def test_one_pass_statistics_are_accurate_on_adversarial_data(case, path):
    """The shifted one-pass statistics: the cancellation is bounded by 1 / f = 16 whatever the
    data (core/closed_form.py, _moments), so float32 stays within a few float32 ulps of the
    float64 truth (measured <= 2.5e-6 relative) where a bad shift loses everything."""
    x = tf.constant(_adversarial_batches()[case], tf.float32)
    x64 = np.asarray(x, np.float64)
    gamma, beta = tf.ones([4]), tf.zeros([4])
    _, mean, var = closed_form.standardize(x, gamma, beta, (0, 1, 2), EPS)
    true_var = x64.var(axis=(0, 1, 2), keepdims=True)
    np.testing.assert_allclose(var, true_var, rtol=1e-5)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 1, 2), keepdims=True), rtol=1e-7)
    # The shift's amplification (mean - m0)^2 / var is within its bound 1/f - 1 = 15.
    m0 = np.asarray(closed_form._shift(tf.constant(x64), (0, 1, 2)))
    amplification = (x64.mean(axis=(0, 1, 2), keepdims=True) - m0) ** 2 / true_var
    assert np.all(amplification <= 15.0 + 1e-9), amplification


def test_one_pass_statistics_need_the_shift(monkeypatch):
    """Without the shift (m0 = 0, i.e. E[x^2] - E[x]^2) the same computation loses the variance:
    the accuracy test above can tell a good shift from a bad one."""
    x = tf.constant(_adversarial_batches()["offset 1e4"], tf.float32)
    true_var = np.asarray(x, np.float64).var(axis=(0, 1, 2), keepdims=True)
    monkeypatch.setattr(
        closed_form, "_shift", lambda x, axes: tf.zeros([1] * x.shape.rank, x.dtype)
    )
    closed_form._xla.cache_clear()  # compiled functions traced with the real shift
    try:
        _, _, var = closed_form.standardize(x, tf.ones([4]), tf.zeros([4]), (0, 1, 2), EPS)
    finally:
        closed_form._xla.cache_clear()  # nor may later tests get this one
    assert np.max(np.abs(var - true_var) / true_var) > 0.1


@pytest.mark.parametrize("jit", [False, True], ids=["function", "jit"])
def test_inside_tf_function_and_jit_compile(jit, path):
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(8, 5, 5, 6)), tf.float32)
    dy = tf.constant(rng.normal(size=(8, 5, 5, 6)), tf.float32)
    gamma = tf.constant(rng.normal(1, 0.3, 6), tf.float32)
    beta = tf.constant(rng.normal(0, 0.3, 6), tf.float32)

    def step(x, gamma, beta, dy):
        results = []
        for fn in (_norm("batch", "closed_form"), _norm("layer", "closed_form")):
            results += _value_and_grads(fn, dy, x, gamma, beta)
        results += _value_and_grads(_norm("group", "closed_form", 3), dy, x, gamma, beta)
        return results

    eager = step(x, gamma, beta, dy)
    compiled = tf.function(step, jit_compile=jit)(x, gamma, beta, dy)
    for e, c in zip(eager, compiled):
        assert c.shape == e.shape
        # XLA may fuse and reorder float32 arithmetic: equal to rounding, not bitwise.
        np.testing.assert_allclose(c, e, rtol=0, atol=1e-5)


def test_unknown_batch_size(path):
    """A tf.function traced with an unknown batch dimension: static shapes where they exist."""
    rng = np.random.default_rng(5)
    spec = tf.TensorSpec([None, 5, 5, 6], tf.float32)
    gamma, beta = tf.ones([6]), tf.zeros([6])

    @tf.function(input_signature=[spec, spec])
    def step(x, dy):
        outputs = []
        for fn in (_norm("batch", "closed_form"), _norm("group", "closed_form", 2)):
            y, dx, dgamma, dbeta = _value_and_grads(fn, dy, x, gamma, beta)
            assert y.shape.as_list() == [None, 5, 5, 6] and dx.shape.as_list() == [None, 5, 5, 6]
            assert dgamma.shape == [6] and dbeta.shape == [6]
            outputs += [y, dx]
        _, mean, var = core.batch_norm_and_moments(x, gamma, beta)
        assert mean.shape == [6] and var.shape == [6]
        return outputs

    for n in (3, 7):
        x = tf.constant(rng.normal(size=(n, 5, 5, 6)), tf.float32)
        dy = tf.constant(rng.normal(size=(n, 5, 5, 6)), tf.float32)
        got = step(x, dy)
        expected = []
        for fn in (_norm("batch", "autodiff"), _norm("group", "autodiff", 2)):
            expected += _value_and_grads(fn, dy, x, gamma, beta)[:2]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_variables_get_gradients(path):
    """Modules pass tf.Variables as gamma/beta: the tape must reach them."""
    rng = np.random.default_rng(6)
    x = tf.constant(rng.normal(size=(8, 4, 4, 3)), tf.float32)
    gamma, beta = tf.Variable(tf.ones([3])), tf.Variable(tf.zeros([3]))
    grads = {}
    for backward in ("closed_form", "autodiff"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(core.batch_norm(x, gamma, beta, backward=backward)) * x)
        grads[backward] = tape.gradient(loss, [gamma, beta])
    for c, a in zip(grads["closed_form"], grads["autodiff"]):
        assert c is not None
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "function"])
def test_second_order_gradients_raise(graph, path):
    """Not supported (documented): an error, not silently wrong numbers; autodiff works."""
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(4, 3, 3, 2)))
    gamma, beta = tf.ones([2], tf.float64), tf.zeros([2], tf.float64)

    def gradient_penalty_grad(x, backward):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = core.layer_norm(x, gamma, beta, backward=backward)
                loss = tf.reduce_sum(y * y * y)
            penalty = tf.reduce_sum(tf.square(inner.gradient(loss, x)))
        return outer.gradient(penalty, x)

    run = tf.function(gradient_penalty_grad) if graph else gradient_penalty_grad
    assert run(x, "autodiff") is not None
    with pytest.raises(NotImplementedError, match='backward="autodiff"'):
        run(x, "closed_form")


@pytest.mark.parametrize("bad", ["closed-form", "Autodiff", None, 1])
def test_bad_backward_is_a_value_error(bad):
    x, gamma, beta = tf.zeros([4, 3, 3, 6]), tf.ones([6]), tf.zeros([6])
    for call in (
        lambda: core.batch_norm(x, gamma, beta, backward=bad),
        lambda: core.batch_norm_and_moments(x, gamma, beta, backward=bad),
        lambda: core.layer_norm(x, gamma, beta, backward=bad),
        lambda: core.group_norm(x, gamma, beta, 2, backward=bad),
    ):
        with pytest.raises(ValueError, match="backward must be one of .*closed_form.*autodiff"):
            call()


def test_compiles_only_large_tensors(monkeypatch):
    """The default compiles from 2^16 elements (and for sizes unknown at trace time)."""
    calls = []
    original = closed_form._xla

    def spy(fn, signature):
        calls.append(signature[0])
        return original(fn, signature)

    monkeypatch.setattr(closed_form, "_xla", spy)
    ones, zeros = tf.ones([4]), tf.zeros([4])
    core.batch_norm(tf.ones([128, 8, 8, 4]), ones, zeros)  # 32768 elements
    assert calls == []
    core.batch_norm(tf.ones([256, 8, 8, 4]), ones, zeros)  # 65536 elements
    assert calls == [(256 * 8 * 8, 4), (256 * 8 * 8, 4)]  # forward and backward, merged layout
