"""normlab's Keras layers against Keras' own and the NumPy float64 reference, layer by layer.

Each norm layer of real Keras models (tests/keras_fixtures.py: a Sequential CNN per norm and
a functional channels-first model) is fed the activations it sees in the Keras model on a
Fashion-MNIST batch. normlab's layer, given Keras' weights by set_weights, must match the
NumPy float64 reference within tolerance(float32) = 64u = 3.8e-6 relative (tests/numerics.py)
for y and every gradient, and Keras' layer within that tolerance plus Keras' own error against
the same reference (Keras' batch norm sums 50k float32 values per channel in float32: measured
2e-5 relative in training at the first convolution, where normlab's blocked sums give 1e-7).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normlab import models
from normlab.core import reference as ref
from tests.keras_fixtures import (
    NORMS,
    channels_first,
    cnn,
    fashion_mnist,
    max_rel,
    norm_layer_inputs,
    randomize_weights,
    reference,
)
from tests.numerics import tolerance

# Tests reading this module's fixture run on one worker (--dist loadgroup): it is made once.
pytestmark = pytest.mark.xdist_group("keras_layers")

F32 = tolerance(tf.float32)


def _call(layer, x, dy, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
    return [y, *tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy)]


@pytest.fixture(scope="module")
def built_models():
    built = {norm: (cnn(keras.layers, norm), cnn(models, norm)) for norm in NORMS}
    built["channels_first"] = (channels_first(keras.layers), channels_first(models))
    return {
        name: (keras_model, ours, _randomized(keras_model))
        for name, (keras_model, ours) in built.items()
    }


def _randomized(model):
    randomize_weights(model)
    return model.get_weights()


@pytest.fixture
def models_under_test(built_models):
    """Keras' model and normlab's, both with the same randomized weights (reset per test:
    training-mode calls move the moving statistics)."""
    for keras_model, ours, weights in built_models.values():
        keras_model.set_weights(weights)
        ours.set_weights(weights)
    return {name: pair[:2] for name, pair in built_models.items()}


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("name", [*NORMS, "channels_first"])
def test_each_norm_layer_matches_keras_and_thereference(models_under_test, name, training):
    keras_model, ours = models_under_test[name]
    x, _ = fashion_mnist(64)
    for keras_layer, layer, h in norm_layer_inputs(keras_model, ours, x):
        dy = tf.random.stateless_normal(h.shape, seed=[len(h.shape), 3])
        got, theirs = _call(layer, h, dy, training), _call(keras_layer, h, dy, training)
        want = reference(layer, h, dy, training)
        what = f"{name} {layer.name} {tuple(h.shape)}"
        for i, (a, b, r) in enumerate(zip(got, theirs, want)):
            err, keras_err = max_rel(a, r), max_rel(b, r)
            assert err <= F32, f"{what} output {i}: {err:.2e} from the float64 reference"
            assert max_rel(a, b) <= F32 + keras_err, f"{what} output {i} vs Keras"


@pytest.mark.parametrize("name", [*NORMS, "channels_first"])
def test_the_same_weights_in_the_same_order_as_keras(models_under_test, name):
    keras_model, ours = models_under_test[name]
    for keras_layer, layer in zip(keras_model.layers, ours.layers):
        assert [(w.path.split("/")[-1], w.shape, w.trainable) for w in layer.weights] == [
            (w.path.split("/")[-1], w.shape, w.trainable) for w in keras_layer.weights
        ]
    # The other direction: normlab's weights into a fresh Keras model.
    fresh = channels_first(keras.layers) if name == "channels_first" else cnn(keras.layers, name)
    fresh.set_weights(ours.get_weights())
    for a, b in zip(fresh.get_weights(), ours.get_weights()):
        np.testing.assert_array_equal(a, b)


def _batch_norm(**kwargs):
    layer = models.BatchNormalization(**kwargs)
    layer.build((None, 6, 6, 4))
    return layer


def test_moving_statistics_change_only_in_training_and_when_trainable():
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (16, 6, 6, 4)), tf.float32)
    x64 = x.numpy().astype(np.float64)
    layer = _batch_norm(momentum=0.9)
    layer(x, training=False)
    layer(x)  # no training argument: inference, as in Keras
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)
    layer(x, training=True)
    np.testing.assert_allclose(layer.moving_mean, 0.1 * x64.mean((0, 1, 2)), rtol=F32)
    want = 0.9 + 0.1 * x64.var((0, 1, 2))
    np.testing.assert_allclose(layer.moving_variance, want, rtol=F32)
    # Keras' rule: a non-trainable BatchNormalization runs in inference mode, no update.
    layer.trainable = False
    before = layer.get_weights()
    y = layer(x, training=True)
    for a, b in zip(layer.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    expected = (x64 - before[2]) / np.sqrt(before[3] + 1e-3)
    assert max_rel(y, expected) <= F32


def test_center_and_scale_false_create_no_weights():
    layers = [
        _batch_norm(center=False, scale=False),
        models.LayerNormalization(center=False),
        models.GroupNormalization(2, scale=False),
    ]
    for layer in layers[1:]:
        layer.build((None, 6, 6, 4))
    assert [w.path.split("/")[-1] for w in layers[0].weights] == ["moving_mean", "moving_variance"]
    assert [w.path.split("/")[-1] for w in layers[1].weights] == ["gamma"]
    assert [w.path.split("/")[-1] for w in layers[2].weights] == ["beta"]
    x = tf.constant(np.random.default_rng(1).normal(1.0, 2.0, (8, 6, 6, 4)), tf.float32)
    x64 = x.numpy().astype(np.float64)
    expected = ref.group_norm(x64, np.ones(4), layers[2].beta.numpy(), 2, 1e-3)
    assert max_rel(layers[2](x), expected) <= F32
    expected = ref.batch_norm(x64, np.ones(4), np.zeros(4), 1e-3)
    assert max_rel(layers[0](x, training=True), expected) <= F32


def test_get_config_round_trips_and_matches_keras_arguments():
    cases = [
        (
            models.BatchNormalization,
            {"axis": 1, "momentum": 0.9, "epsilon": 1e-4, "synchronized": True},
        ),
        (models.LayerNormalization, {"axis": [1, 2], "epsilon": 1e-5, "center": False}),
        (models.GroupNormalization, {"groups": -1, "gamma_regularizer": "l2"}),
        (models.RMSNormalization, {"axis": [-2, -1], "epsilon": 1e-5}),
    ]
    for cls, kwargs in cases:
        kwargs["name"] = "norm"
        layer = cls(**kwargs)
        clone = cls.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        keras_config = getattr(keras.layers, cls.__name__)(**kwargs).get_config()
        assert set(layer.get_config()) == set(keras_config), cls.__name__
        # A configuration saved from Keras' layer builds normlab's.
        assert cls.from_config(keras_config).get_config() == layer.get_config()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: models.BatchNormalization(renorm=True), "renorm"),
        (lambda: models.BatchNormalization(momentum=1.0), "momentum must be in"),
        (lambda: models.BatchNormalization(axis=[1, 2]), "axis must be an int"),
        (lambda: models.LayerNormalization(epsilon=0.0), "epsilon must be a number > 0"),
        (lambda: models.LayerNormalization(rms_scaling=True), "RMSNormalization"),
        (lambda: models.GroupNormalization(groups=0), "groups must be a positive int"),
        (lambda: models.WeightNormalization(keras.layers.LSTM(4)), "Dense or"),
        (lambda: models.WeightNormalization(keras.layers.Dense(4, use_bias=False), True), "bias"),
    ],
)
def test_bad_arguments_are_refused_naming_them(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "layer,shape,match",
    [
        (models.GroupNormalization(groups=3), (None, 5, 5, 8), "must divide the 8 channels"),
        (models.LayerNormalization(axis=3), (None, 5, 8), "out of range"),
        (models.BatchNormalization(), (None, 5, None), "must be known"),
    ],
)
def test_bad_input_shapes_are_refused_at_build(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.build(shape)


def test_a_mask_is_refused_by_batch_norm():
    layer = _batch_norm()
    with pytest.raises(ValueError, match="does not take a mask"):
        layer(tf.ones([2, 6, 6, 4]), training=True, mask=tf.ones([2, 6, 6], tf.bool))


# -- WeightNormalization -------------------------------------------------------------------------


def _kernel_norms(v):
    v = np.asarray(v, np.float64)
    return np.sqrt(np.sum(v**2, axis=tuple(range(v.ndim - 1))))


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: keras.layers.Dense(6, activation="relu"), (16, 10)),
        (lambda: keras.layers.Conv2D(6, 3, strides=2, padding="same"), (8, 9, 9, 3)),
    ],
    ids=["dense", "conv2d"],
)
def test_weight_norm_starts_as_the_wrapped_layer_and_keeps_norm_g(make, shape):
    x = tf.constant(np.random.default_rng(2).normal(size=shape), tf.float32)
    layer, plain = make(), make()
    wrapped = models.WeightNormalization(layer)
    y = wrapped(x)
    plain.build(shape)
    plain.set_weights(layer.get_weights())
    assert wrapped.g.shape == (6,)  # one length per output unit
    assert max_rel(wrapped.g, _kernel_norms(wrapped.v)) <= F32  # g = ||v||: w = v
    assert max_rel(y, plain(x)) <= F32
    # With another g, the layer computes with w = g v / ||v||: ||w[..., j]|| = g[j].
    g = np.linspace(0.5, 2.0, 6).astype(np.float32)
    wrapped.g.assign(g)
    v = wrapped.v.numpy().astype(np.float64)
    plain.kernel.assign((v / _kernel_norms(v) * g).astype(np.float32))
    assert max_rel(wrapped(x), plain(x)) <= F32
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wrapped(x) ** 2)
    grads = tape.gradient(loss, wrapped.trainable_weights)
    assert [w.path.split("/")[-1] for w in wrapped.trainable_weights] == ["g", "kernel", "bias"]
    assert all(grad is not None and np.any(grad.numpy() != 0) for grad in grads)


@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_weight_norm_data_dependent_init_on_the_first_training_batch(kind):
    rng = np.random.default_rng(3)
    if kind == "dense":
        layer, x = keras.layers.Dense(5, activation="relu"), rng.normal(2.0, 3.0, (64, 12))
    else:
        layer, x = keras.layers.Conv2D(5, 3), rng.normal(2.0, 3.0, (16, 8, 8, 3))
    x = tf.constant(x, tf.float32)
    wrapped = models.WeightNormalization(layer, data_init=True)
    wrapped(x)  # inference: no initialisation
    assert not wrapped.initialized.numpy()
    first = wrapped(x, training=True)
    assert wrapped.initialized.numpy()
    # Pre-activations x . (g v / ||v||) + b of that batch: mean 0 and variance 1 per unit.
    v, g, b = (w.numpy().astype(np.float64) for w in (wrapped.v, wrapped.g, layer.bias))
    w = tf.constant(v / _kernel_norms(v) * g)
    x64 = tf.cast(x, tf.float64)
    pre = (tf.matmul(x64, w) if kind == "dense" else tf.nn.conv2d(x64, w, 1, "VALID")) + b
    pre = pre.numpy().reshape(-1, 5)
    np.testing.assert_allclose(pre.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(pre.var(axis=0), 1.0, rtol=1e-4)  # eps = 1e-6 in the init
    # The output of that first call already uses the initialised g and bias.
    expected = np.maximum(pre, 0) if kind == "dense" else pre
    assert max_rel(np.reshape(first, (-1, 5)), expected) <= F32
    before = [w.numpy() for w in wrapped.weights]
    wrapped(x[::-1] + 1.0, training=True)  # a second batch does not initialise again
    for a, b in zip(wrapped.weights, before):
        np.testing.assert_array_equal(a.numpy(), b)


def test_batch_norm_statistics_more_accurate_than_keras(models_under_test):
    """The first batch norm of the CNN on 64 images: 50176 float32 values per channel. Keras'
    tf.nn.moments sums them in float32; normlab's sums are blocked (BUILD_NOTES.md, Numerics).
    `pytest -s` prints both errors against the float64 reference."""
    keras_model, ours = models_under_test["batch"]
    keras_layer, layer, h = norm_layer_inputs(keras_model, ours, fashion_mnist(64)[0])[0]
    want = reference(layer, h, np.zeros(h.shape))[0]
    err = max_rel(layer(h, training=True), want)
    keras_err = max_rel(keras_layer(h, training=True), want)
    print(f"\nbatch norm, {tuple(h.shape)}: normlab {err:.2e}, Keras {keras_err:.2e}")
    assert err <= F32 and keras_err > 10 * err
