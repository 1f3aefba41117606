"""core's functions as Keras calls them: on its variables, and on a batch of unknown size.

A variable (keras.Variable, tf.Variable, mirrored ones) must stay in the graph: its gradient
must reach it, eagerly and inside tf.function (where Keras' model.fit runs). model.fit traces
its step with a batch size unknown at trace time whenever the data does not divide into whole
batches. Each case is compared with the independent NumPy float64 reference of
core/reference.py (tolerance from tests/numerics.py); arrays, lists and numbers must give the
same result as tensors.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normlab import core
from normlab.core import closed_form
from normlab.core import reference as ref
from tests.numerics import assert_close

EPS = 1e-3
SHAPE = (6, 4, 4, 8)
F32 = tf.float32


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.7, 1.9, SHAPE).astype(np.float32)
    gamma = rng.normal(1.0, 0.3, SHAPE[-1]).astype(np.float32)
    beta = rng.normal(0.0, 0.3, SHAPE[-1]).astype(np.float32)
    dy = rng.normal(size=SHAPE).astype(np.float32)
    return x, gamma, beta, dy


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


# name -> (fn(x, gamma, beta) -> y, reference (x, gamma, beta, dy) -> (y, dx, dgamma, dbeta))
CASES = {
    "batch_norm": (
        lambda x, g, b: core.batch_norm(x, g, b, EPS),
        lambda x, g, b, dy: (ref.batch_norm(x, g, b, EPS), *ref.batch_norm_grads(x, g, EPS, dy)),
    ),
    "batch_norm_autodiff": (
        lambda x, g, b: core.batch_norm(x, g, b, EPS, backward="autodiff"),
        lambda x, g, b, dy: (ref.batch_norm(x, g, b, EPS), *ref.batch_norm_grads(x, g, EPS, dy)),
    ),
    "sync_batch_norm_and_moments": (
        lambda x, g, b: core.sync_batch_norm_and_moments(x, g, b, EPS)[0],
        lambda x, g, b, dy: (ref.batch_norm(x, g, b, EPS), *ref.batch_norm_grads(x, g, EPS, dy)),
    ),
    "layer_norm": (
        lambda x, g, b: core.layer_norm(x, g, b, EPS),
        lambda x, g, b, dy: (ref.layer_norm(x, g, b, EPS), *ref.layer_norm_grads(x, g, EPS, dy)),
    ),
    "group_norm": (
        lambda x, g, b: core.group_norm(x, g, b, 4, EPS),
        lambda x, g, b, dy: (
            ref.group_norm(x, g, b, 4, EPS),
            *ref.group_norm_grads(x, g, 4, EPS, dy),
        ),
    ),
}


def _grads(fn, x, gamma, beta, dy, compiled):
    """y and d sum(y * dy) / d(x, gamma, beta); x, gamma, beta may be variables."""

    def step():
        with tf.GradientTape() as tape:
            y = fn(x, gamma, beta)
            loss = tf.reduce_sum(y * dy)
        return y, tape.gradient(loss, [x, gamma, beta])

    return tf.function(step)() if compiled else step()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("case", list(CASES))
def test_keras_variables_get_their_gradients(case, compiled):
    """The issue's failure: [None, None] eagerly, `numpy() is only available...` in a graph."""
    fn, reference = CASES[case]
    x, gamma, beta, dy = _data()
    xv, gv, bv = keras.Variable(x), keras.Variable(gamma), keras.Variable(beta)
    y, (dx, dgamma, dbeta) = _grads(fn, xv, gv, bv, tf.constant(dy), compiled)
    assert None not in (dx, dgamma, dbeta)
    ry, rdx, rdgamma, rdbeta = reference(*_f64(x, gamma, beta, dy))
    for name, got, want in [("y", y, ry), ("dx", dx, rdx), ("dgamma", dgamma, rdgamma)]:
        assert_close(got, want, F32, name)
    assert_close(dbeta, rdbeta, F32, "dbeta")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_rms_and_weight_norm_keras_variables(compiled):
    x, gamma, _, dy = _data(1)
    v = np.random.default_rng(2).normal(size=(3, 3, 8, 5)).astype(np.float32)
    g = np.random.default_rng(3).uniform(0.5, 2.0, 5).astype(np.float32)
    dw = np.random.default_rng(4).normal(size=v.shape).astype(np.float32)
    xv, gammav, vv, gv = (keras.Variable(a) for a in (x, gamma, v, g))

    def step():
        with tf.GradientTape() as tape:
            y = core.rms_norm(xv, gammav)
            w = core.weight_norm(vv, gv)
            loss = tf.reduce_sum(y * dy) + tf.reduce_sum(w * dw)
        return y, w, core.kernel_norm(vv), tape.gradient(loss, [xv, gammav, vv, gv])

    y, w, norm, grads = tf.function(step)() if compiled else step()
    assert all(grad is not None for grad in grads)
    x64, gamma64, v64, g64, dy64, dw64 = _f64(x, gamma, v, g, dy, dw)
    assert_close(y, ref.rms_norm(x64, gamma64, 1e-6), F32, "rms y")
    # d sum(rms_norm(x) * dy) / d gamma = sum over examples of dy * x / rms(x).
    ms = np.mean(x64**2, axis=(1, 2, 3), keepdims=True)
    assert_close(grads[1], np.sum(dy64 * x64 / np.sqrt(ms + 1e-6), axis=(0, 1, 2)), F32, "dgamma")
    assert_close(w, ref.weight_norm(v64, g64), F32, "w")
    assert_close(norm, np.sqrt(np.sum(v64**2, axis=(0, 1, 2))), F32, "kernel_norm")
    dv, dg = ref.weight_norm_grads(v64, g64, dw64)
    assert_close(grads[2], dv, F32, "dv")
    assert_close(grads[3], dg, F32, "dg")


def test_moving_statistics_as_keras_variables_in_a_graph():
    """batch_norm_inference and moving_average_update read and update keras.Variables."""
    x, gamma, beta, dy = _data(5)
    mean = keras.Variable(np.linspace(-1, 1, 8).astype(np.float32))
    variance = keras.Variable(np.linspace(0.5, 2, 8).astype(np.float32))
    gv, bv = keras.Variable(gamma), keras.Variable(beta)
    initial = (mean.numpy().copy(), variance.numpy().copy())

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            y = core.batch_norm_inference(x, mean, variance, gv, bv, EPS)
            loss = tf.reduce_sum(y * dy)
        _, batch_mean, batch_var = core.batch_norm_and_moments(x, gv, bv, EPS)
        mean.assign(core.moving_average_update(mean, batch_mean, 0.9))
        variance.assign(core.moving_average_update(variance, batch_var, 0.9))
        return y, tape.gradient(loss, [gv, bv])

    y, (dgamma, dbeta) = step()
    x64, m64, v64, g64, b64, dy64 = _f64(x, *initial, gamma, beta, dy)
    xhat = (x64 - m64) / np.sqrt(v64 + EPS)
    assert_close(y, xhat * g64 + b64, F32, "y")
    assert_close(dgamma, np.sum(dy64 * xhat, axis=(0, 1, 2)), F32, "dgamma")
    assert_close(dbeta, np.sum(dy64, axis=(0, 1, 2)), F32, "dbeta")
    assert_close(mean, 0.9 * m64 + 0.1 * x64.mean(axis=(0, 1, 2)), F32, "moving mean")
    assert_close(variance, 0.9 * v64 + 0.1 * x64.var(axis=(0, 1, 2)), F32, "moving variance")


def test_tf_and_mirrored_variables_get_their_gradients():
    """tf.Variable, and tf/keras variables created in a strategy's scope (mirrored)."""
    x, gamma, beta, dy = _data(6)
    ry, _, rdgamma, rdbeta = CASES["layer_norm"][1](*_f64(x, gamma, beta, dy))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        mirrored = [(tf.Variable(gamma), tf.Variable(beta))]
        mirrored.append((keras.Variable(gamma), keras.Variable(beta)))
    plain = (tf.Variable(gamma), tf.Variable(beta))
    for gv, bv in [plain, *mirrored]:

        def step(gv=gv, bv=bv):
            with tf.GradientTape() as tape:
                y = core.layer_norm(x, gv, bv, EPS)
                loss = tf.reduce_sum(y * dy)
            return (y, *tape.gradient(loss, [gv, bv]))

        y, dgamma, dbeta = strategy.run(tf.function(step))
        assert_close(y, ry, F32, f"y {type(gv).__name__}")
        assert_close(dgamma, rdgamma, F32, "dgamma")
        assert_close(dbeta, rdbeta, F32, "dbeta")


def test_arrays_lists_and_numbers_equal_tensors():
    x, gamma, beta, _ = _data(7)
    want = core.group_norm(tf.constant(x), tf.constant(gamma), tf.constant(beta), 2)
    as_lists = core.group_norm(x.tolist(), gamma.tolist(), [float(b) for b in beta], 2)
    as_arrays = core.group_norm(x, gamma, beta, 2)
    # Lists of Python floats become float64 arrays: the result is float64, the same numbers.
    np.testing.assert_allclose(np.asarray(as_lists), np.asarray(want), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(as_arrays), np.asarray(want))
    moved = core.moving_average_update(tf.constant([1.0, 2.0]), 3.0, 0.5)
    np.testing.assert_array_equal(np.asarray(moved), [2.0, 2.5])


class CoreLayerNorm(keras.layers.Layer):
    """What the issue's users wrote: a Keras layer whose weights go to core.layer_norm."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=input_shape[-1:], initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=input_shape[-1:], initializer="zeros", name="beta")

    def call(self, x):
        return core.layer_norm(x, self.gamma, self.beta, EPS)


def test_mixed_precision_autocast_reads_the_compute_dtype():
    """Under mixed_bfloat16 a Keras layer's float32 weights read as bfloat16 in call (Keras'
    autocast scope); core takes them as they are, and the gradients reach the float32 weights."""
    x, gamma, beta, dy = _data(8)
    layer = CoreLayerNorm(dtype="mixed_bfloat16")
    layer.build(SHAPE)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    xb = tf.cast(x, tf.bfloat16)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            y = layer(xb)
            loss = tf.reduce_sum(tf.cast(y, F32) * dy)
        return y, tape.gradient(loss, [layer.gamma, layer.beta])

    y, (dgamma, dbeta) = step()
    assert layer.gamma.dtype == "float32" and y.dtype == tf.bfloat16
    assert dgamma.dtype == F32 and dbeta.dtype == F32
    # The reference sees what the layer computed with: x, gamma and beta rounded to bfloat16.
    x64, g64, b64 = (
        np.asarray(tf.cast(tf.cast(a, tf.bfloat16), tf.float64)) for a in (x, gamma, beta)
    )
    assert_close(y, ref.layer_norm(x64, g64, b64, EPS), tf.bfloat16, "y")
    _, rdgamma, rdbeta = ref.layer_norm_grads(x64, g64, EPS, dy.astype(np.float64))
    # The gradients are rounded to bfloat16 once (the weights were read as bfloat16).
    assert_close(dgamma, rdgamma, tf.bfloat16, "dgamma")
    assert_close(dbeta, rdbeta, tf.bfloat16, "dbeta")


def test_model_fit_trains_the_weights_of_a_layer_calling_core():
    """The issue's model.fit: gamma and beta change (they stayed at 1 and 0, with a warning)."""
    x, _, _, _ = _data(9)
    labels = np.arange(len(x)) % 3
    model = keras.Sequential(
        [keras.Input(SHAPE[1:]), CoreLayerNorm(), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    norm = model.layers[0]
    model.fit(x, labels, epochs=2, batch_size=3, verbose=0)
    assert np.max(np.abs(norm.gamma.numpy() - 1.0)) > 1e-3
    assert np.max(np.abs(norm.beta.numpy())) > 1e-3


@pytest.mark.parametrize(
    "bad,match",
    [
        (keras.Variable(np.zeros([4, 8], np.int32)), "x must be a floating-point tensor"),
        (tf.ragged.constant([[1.0], [2.0, 3.0]]), "x must be a dense tensor"),
        (keras.Input((8,)), "x cannot be converted to a tensor"),
        (np.array([[None, 1.0]] * 2, dtype=object), "x must be a floating-point tensor"),
    ],
    ids=["int-keras-variable", "ragged", "keras-input", "object-array"],
)
def test_bad_tensor_likes_get_a_clear_type_error(bad, match):
    with pytest.raises(TypeError, match=match):
        core.layer_norm(bad, tf.ones([8]), tf.zeros([8]))


@pytest.mark.parametrize("shape", [(40, 7, 7, 8), (30, 12)], ids=str)
def test_a_batch_of_unknown_size_gives_the_reference(shape):
    """Batch norm traced with shape [None, ...], as model.fit traces a step."""
    rng = np.random.default_rng(10)
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)
    gamma, beta = (rng.normal(1.0, 0.3, shape[-1]).astype(np.float32) for _ in range(2))
    dy = rng.normal(size=shape).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec((None, *shape[1:]))])
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = core.batch_norm(x, gamma, beta, EPS)
        return y, tape.gradient(y, x, output_gradients=dy)

    y, dx = step(x)
    x64, g64, b64, dy64 = _f64(x, gamma, beta, dy)
    assert_close(y, ref.batch_norm(x64, g64, b64, EPS), F32, "y")
    assert_close(dx, ref.batch_norm_grads(x64, g64, EPS, dy64)[0], F32, "dx")


def test_a_batch_of_unknown_size_keeps_a_static_block_axis():
    """The closed form splits a static factor off the unknown batch axis (784 = 16 * 49 for
    28x28 images), so its sums stay blocked float32 sums instead of float64 sums of all of x."""
    layouts = []

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 32])])
    def trace(x):
        layouts.append(closed_form._merged_layout(x, 1, 1, [0, 1, 2]))
        return x

    trace.get_concrete_function()
    shape, roles = layouts[0]
    assert tf.is_tensor(shape[0]) and shape[1:] == [16, 32]
    assert [role[0] for role in roles] == [True, True, False]


def test_every_variable_kind_takes_the_graph_path():
    """np.asarray only for what is not tensor-like; a PerReplica value (DistributedValues)
    outside a replica context cannot become one tensor: a clear TypeError, not np.asarray."""
    from normlab.core import _checks

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        mirrored = tf.Variable([1.0])
    per_replica = strategy.experimental_distribute_values_from_function(lambda _: tf.ones([2, 8]))
    graph_path = [
        tf.constant([1.0]),
        tf.Variable([1.0]),  # a ResourceVariable
        keras.Variable([1.0]),
        mirrored,
        per_replica,
    ]
    assert all(_checks._is_tensor_like(v) for v in graph_path)
    assert not any(_checks._is_tensor_like(v) for v in (np.ones(1), [1.0], 1.0))
    with pytest.raises(TypeError, match="x cannot be converted to a tensor"):
        core.layer_norm(per_replica, tf.ones([8]), tf.zeros([8]))
