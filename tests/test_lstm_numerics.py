"""The LSTM's numerics: recurrent batch norm's per-step statistics, custom == built-in at every
time step, and the LN-LSTM / BN-LSTM cells against NumPy float64 implementations of the papers'
equations. Tolerances: tests/numerics.py."""

import numpy as np
import pytest
import tensorflow as tf

from normlab.core import registry
from normlab.models import ModelConfig
from normlab.models.lstm import LSTM
from normlab.models.recurrent_norms import recurrent_batch_norm
from tests.numerics import assert_close, tolerance

EPS = 1e-3  # ModelConfig's default norm_eps
F32 = tf.float32


def _config(norm, impl="custom", **kwargs) -> ModelConfig:
    return ModelConfig(arch="lstm", norm=norm, norm_impl=impl, **kwargs)


def _normal(shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape)


def _randomize_trainable(model: LSTM, seed: int) -> None:
    """Moves every trainable variable off its initial value (gains 1 / 0.1, biases 0 would
    leave the norms' affine parameters untested): a relative perturbation of up to 30%, plus
    an offset for the norms' parameters."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        value = v.numpy() * (1 + 0.3 * rng.uniform(-1, 1, v.shape))
        if v.shape.rank == 1:
            value = value + 0.2 * rng.normal(size=v.shape)
        v.assign(value.astype(np.float32))


def _copy(source: LSTM, target: LSTM) -> None:
    for a, b in zip(source.variables, target.variables, strict=True):
        b.assign(a)


# -- recurrent batch norm: statistics and moving averages per time step ------------------------


def _bn_reference(x, mean, variance, gamma, beta):
    return (x - mean) / np.sqrt(variance + EPS) * gamma + beta


def test_recurrent_batch_norm_keeps_statistics_per_time_step():
    steps, channels, momentum = 3, 4, 0.9
    norm = recurrent_batch_norm(registry.get("batch"), channels, steps, momentum=momentum)
    gamma, beta = _normal([channels], 1), _normal([channels], 2)
    norm.gamma.assign(gamma.astype(np.float32))
    norm.beta.assign(beta.astype(np.float32))
    np.testing.assert_array_equal(norm.moving_mean.numpy(), np.zeros([steps, channels]))
    np.testing.assert_array_equal(norm.moving_variance.numpy(), np.ones([steps, channels]))

    # A sequence whose steps have different statistics: shared statistics would fail.
    loc, scale = np.array([-2.0, 0.5, 3.0])[:, None], np.array([0.5, 1.0, 4.0])[:, None]
    x1 = tf.constant(_normal([32, steps, channels], 3, loc, scale), F32)
    y = norm(x1, training=True)
    x1 = x1.numpy().astype(np.float64)
    mean1, var1 = x1.mean(0), x1.var(0)  # [steps, C]: per time step and channel
    assert_close(y, _bn_reference(x1, mean1, var1, gamma, beta), F32, "training output")
    expected_mean = momentum * 0.0 + (1 - momentum) * mean1
    expected_var = momentum * 1.0 + (1 - momentum) * var1
    assert_close(norm.moving_mean, expected_mean, F32, "moving mean")
    assert_close(norm.moving_variance, expected_var, F32, "moving variance")

    # Step by step, as the LSTM's recurrent term: steps 0 and 1 of another batch, one update.
    x2 = _normal([32, 2, channels], 4, loc[:2], scale[:2])
    stats = [norm.normalize(tf.constant(x2[:, t], F32), t, training=True)[1] for t in (0, 1)]
    before = norm.moving_variance.numpy().copy()
    norm.update(*(tf.concat(s, axis=0) for s in zip(*stats)))
    expected_mean[:2] = momentum * expected_mean[:2] + (1 - momentum) * x2.mean(0)
    expected_var[:2] = momentum * expected_var[:2] + (1 - momentum) * x2.var(0)
    assert_close(norm.moving_mean[:2], expected_mean[:2], F32, "moving mean, second update")
    assert_close(norm.moving_variance[:2], expected_var[:2], F32, "moving var, second update")
    np.testing.assert_array_equal(norm.moving_variance[2], before[2])  # step 2 not trained

    # Inference: the moving statistics of each step, unchanged; steps 3 and 4, beyond the
    # trained length of 3, use step 2's.
    moving = [norm.moving_mean.numpy().copy(), norm.moving_variance.numpy().copy()]
    x3 = _normal([8, 5, channels], 5, 1.0, 2.0)
    y = norm(tf.constant(x3, F32), training=False)
    rows = [0, 1, 2, 2, 2]
    expected = _bn_reference(x3, moving[0][rows], moving[1][rows], gamma, beta)
    assert_close(y, expected, F32, "inference output")
    y_step = norm.normalize(tf.constant(x3[:, 4], F32), 4, training=False)[0]
    assert_close(y_step, expected[:, 4], F32, "inference, one step beyond the trained length")
    np.testing.assert_array_equal(norm.moving_mean.numpy(), moving[0])
    np.testing.assert_array_equal(norm.moving_variance.numpy(), moving[1])

    with pytest.raises(ValueError, match="statistics are kept for 3 steps"):
        norm(tf.constant(x3[:, :4], F32), training=True)
    with pytest.raises(ValueError, match=r"x must be \[N, 4\]"):
        norm.normalize(tf.zeros([8, 5]), 0, training=True)


def _assert_mean_close(actual, weight: float, data: np.ndarray, what: str) -> None:
    """actual == weight * data.mean(0) to float32 rounding, measured against the magnitude of
    the averaged values: the mean of values of both signs can be far smaller than they are,
    and its rounding error is relative to them, not to it."""
    error = np.max(np.abs(np.asarray(actual, np.float64) - weight * data.mean(0)))
    assert error <= tolerance(F32) * weight * np.max(np.abs(data)), (what, error)


def test_lstm_moving_statistics_per_time_step_move_only_in_training():
    steps = 6
    model = LSTM(_config("batch", lstm_units=8, bn_momentum=0.9), image_shape=(steps, 28, 1))
    x = tf.constant(_normal([16, steps, 28, 1], 0), F32)
    acts = model.time_steps(x, training=True)
    for name, key in (
        ("input_norm", "input/pre"),
        ("recurrent_norm", "recurrent/pre"),
        ("cell_norm", "cell/pre"),
    ):
        module = getattr(model, name)
        pre = acts[key].numpy().astype(np.float64)  # [N, steps, C]: what the norm was given
        _assert_mean_close(module.moving_mean, 0.1, pre, f"{name} moving mean")
        assert_close(module.moving_variance, 0.9 + 0.1 * pre.var(0), F32, f"{name} moving var")
        assert not np.allclose(module.moving_mean[1], module.moving_mean[steps - 1])

    moving = [v.numpy().copy() for v in model.variables if not v.trainable]
    longer = tf.constant(_normal([16, steps + 2, 28, 1], 1), F32)
    acts = model.time_steps(longer, training=False)
    for v, before in zip([v for v in model.variables if not v.trainable], moving, strict=True):
        np.testing.assert_array_equal(v.numpy(), before)  # inference moves nothing
    # Steps 6 and 7, beyond the trained length, use step 5's statistics.
    for name, key in (("input_norm", "input"), ("recurrent_norm", "recurrent")):
        module = getattr(model, name)
        last = [module.moving_mean[steps - 1].numpy(), module.moving_variance[steps - 1].numpy()]
        pre = acts[f"{key}/pre"].numpy().astype(np.float64)[:, steps:]
        gamma = module.gamma.numpy()  # no beta: b is the bias of N_x and N_h
        expected = _bn_reference(pre, *last, gamma, 0.0)
        assert_close(acts[f"{key}/post"][:, steps:], expected, F32, f"{name} beyond")
    with pytest.raises(ValueError, match="statistics are kept for 6 steps"):
        model(longer, training=True)


# -- custom == built-in on the same weights -----------------------------------------------------


# Every norm; batch norm's built-in twice: synchronized (the default --sync_batch_norm, Keras'
# BatchNormalization(synchronized=True)) and not (fused_batch_norm). Keras' synchronized
# variance is one-pass, E[x^2] - E[x]^2, whose error grows as (mean / std)^2 ulps: on the cell
# state, whose channels' batch mean reaches 5.5 standard deviations here, it is the largest
# difference of these tests (measured 38 float32 ulps from float64, normlab's 5; tolerance 64).
CASES = [pytest.param(norm, True, id=norm) for norm in registry.NORMS] + [
    pytest.param("batch", False, id="batch-unsynchronized")
]


def _pair(norm, sync, units, image_shape=(28, 28, 1), seed=3):
    """Custom and built-in models holding the same weights (and moving statistics, which a
    training call moved away from their initial values)."""
    custom, builtin = (
        LSTM(
            _config(norm, impl, lstm_units=units, seed=seed, sync_batch_norm=sync),
            image_shape=image_shape,
        )
        for impl in ("custom", "builtin")
    )
    _randomize_trainable(custom, seed)
    custom(tf.constant(_normal([16, *image_shape], seed + 1), F32), training=True)
    _copy(custom, builtin)
    return custom, builtin


def _cell_variables(model):
    names = ("recurrent", "recurrent_norm", "gates", "cell_norm")
    return [v for name, m in model.named_layers() if name in names for v in m.trainable_variables]


@pytest.mark.parametrize("norm,sync", CASES)
def test_custom_and_builtin_agree_at_every_time_step(norm, sync):
    """Each step of the built-in model is given the custom model's state (h_{t-1}, c_{t-1}) and
    input term: the comparison is one step's rounding, not 28 steps' accumulated drift (both
    implementations drift from float64 alike; the whole sequence is compared on a short one in
    test_custom_and_builtin_logits_agree). Gradients are those of a fixed random projection
    of the step's outputs (a sum over a normalization's output has a zero gradient and would
    compare nothing), as core.parity does."""
    units, n = 32, 16
    custom, builtin = _pair(norm, sync, units)
    x = tf.constant(_normal([n, 28, 28, 1], 7), F32)
    dh, dc = (tf.constant(_normal([n, units], s), F32) for s in (8, 9))
    for training in (False, True):  # inference first: training moves the moving statistics
        ref = custom.time_steps(x, training=training)
        other = builtin.time_steps(x, training=training)
        for key in ("input/pre", "input/post"):
            for t in range(28):
                assert_close(other[key][:, t], ref[key][:, t], F32, f"{key} step {t}")
        for t in range(28):
            zeros = tf.zeros([n, units])
            state = (ref["hidden"][:, t - 1], ref["cell/pre"][:, t - 1]) if t else (zeros, zeros)
            inputs = ref["input/post"][:, t]
            results = []
            for model in (custom, builtin):
                variables = _cell_variables(model)
                with tf.GradientTape() as tape:
                    tape.watch([inputs, *state])
                    (h, c), acts = model.cell(inputs, state, t, training=training)
                    loss = tf.reduce_sum(h * dh) + tf.reduce_sum(c * dc)
                results.append((acts, tape.gradient(loss, [inputs, *state, *variables])))
            (acts_c, grads_c), (acts_b, grads_b) = results
            for key in acts_c:
                assert_close(acts_b[key], acts_c[key], F32, f"{key} step {t} ({training=})")
            for v, gc, gb in zip(_cell_variables(custom), grads_c[3:], grads_b[3:], strict=True):
                assert_close(gb, gc, F32, f"d{v.name} step {t} ({training=})")
            for what, gc, gb in zip(("dinputs", "dh", "dc"), grads_c, grads_b):
                if t or what == "dinputs":  # at t = 0, W_h h_0 = 0: its gradient is 0 or cancels
                    assert_close(gb, gc, F32, f"{what} step {t} ({training=})")


@pytest.mark.parametrize("norm,sync", CASES)
def test_custom_and_builtin_logits_agree(norm, sync):
    """The whole sequence on a 4-row image: few enough steps that the accumulated rounding
    stays within one normalization's tolerance; the input term's gradients too."""
    custom, builtin = _pair(norm, sync, 32, image_shape=(4, 28, 1), seed=5)
    x = tf.constant(_normal([16, 4, 28, 1], 6), F32)
    dy = tf.constant(_normal([16, 4, 128], 7), F32)
    for training in (False, True):
        assert_close(builtin(x, training=training), custom(x, training=training), F32, "logits")
    grads = []
    for model in (custom, builtin):
        variables = [
            v
            for name in ("input", "input_norm")
            if getattr(model, name) is not None
            for v in getattr(model, name).trainable_variables
        ]
        with tf.GradientTape() as tape:
            post = model.time_steps(x, training=True)["input/post"]
            loss = tf.reduce_sum(post * dy)
        grads.append(tape.gradient(loss, variables))
    for v, gc, gb in zip(variables, *grads, strict=True):
        assert_close(gb, gc, F32, f"d{v.name} of the input term")


# -- the cells against NumPy float64 implementations of the papers' equations ----------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _layer_norm(v, gain, bias):
    mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mean) / np.sqrt(var + EPS) * gain + bias


def _batch_norm(v, gain, bias):
    return (v - v.mean(0)) / np.sqrt(v.var(0) + EPS) * gain + bias


def _reference(x, params, normalize):
    """Ba et al. (appendix) / Cooijmans et al. (eq. 6-8), gates (i, f, g, o), h_0 = c_0 = 0:

    z = N_h(W_h h) + N_x(W_x x_t) + b;  c = s(f) c + s(i) tanh(g);  h = s(o) tanh(N_c(c))
    """
    n, steps = x.shape[:2]
    units = params["w_h"].shape[0]
    h, c = np.zeros([n, units]), np.zeros([n, units])
    hs, cs = [], []
    for t in range(steps):
        z = (
            normalize(h @ params["w_h"], *params["recurrent_norm"])
            + normalize(x[:, t] @ params["w_x"], *params["input_norm"])
            + params["b"]
        )
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(normalize(c, *params["cell_norm"]))
        hs.append(h)
        cs.append(c)
    logits = h @ params["w_y"] + params["b_y"]
    return np.stack(hs, 1), np.stack(cs, 1), logits


def _params(model: LSTM) -> dict:
    def f64(v):
        return np.asarray(v.numpy(), np.float64)

    def norm(module):
        beta = f64(module.beta) if module.beta is not None else 0.0
        return (f64(module.gamma), beta)

    return {
        "w_x": f64(model.input.kernel),
        "w_h": f64(model.recurrent.kernel),
        "b": f64(model.gates.bias),
        "w_y": f64(model.logits.kernel),
        "b_y": f64(model.logits.bias),
        **{
            name: norm(getattr(model, name))
            for name in ("input_norm", "recurrent_norm", "cell_norm")
        },
    }


@pytest.mark.parametrize(
    "norm,impl,sync,reference",
    [
        ("layer", "custom", True, _layer_norm),
        ("layer", "builtin", True, _layer_norm),
        ("batch", "custom", True, _batch_norm),
        ("batch", "builtin", True, _batch_norm),  # Keras BatchNormalization(synchronized=True)
        ("batch", "builtin", False, _batch_norm),  # fused_batch_norm
    ],
)
@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_cell_equals_the_papers_equations_in_float64(norm, impl, sync, reference, dtype):
    if dtype == tf.float64 and not sync and not registry.get(norm).implementation(impl).float64:
        pytest.skip("fused_batch_norm has no float64 kernel")
    steps, width, units = 4, 7, 6
    model = LSTM(
        _config(norm, impl, lstm_units=units, seed=1, sync_batch_norm=sync),
        image_shape=(steps, width, 1),
        compute_dtype=dtype,
    )
    _randomize_trainable(model, 2)
    x = _normal([12, steps, width, 1], 3, 0.5, 1.5)
    acts = model.time_steps(tf.constant(x), training=True)
    hs, cs, logits = _reference(x[..., 0], _params(model), reference)
    assert_close(acts["hidden"], hs, dtype, "h_t")
    assert_close(acts["cell/pre"], cs, dtype, "c_t")
    assert_close(acts["logits"], logits, F32, "logits (float32 whatever the compute dtype)")
