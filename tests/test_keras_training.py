"""normlab's Keras layers in whole models: accuracy, model.fit, saving, mixed precision, 2 replicas.

Whole-model accuracy is measured against the same Keras model in float64 (Keras' own layers,
an independent implementation): a float32 network's gradients carry the rounding of its
convolutions and loss (measured 1e-5 to 8e-5 relative against float64 for Keras' own layers
and for normlab's alike), so the claim tested is that normlab's layers make the model no less
accurate than Keras' layers do, within a factor 2 and tolerance(float32). Half precision is
compared layer by layer against the NumPy float64 reference at tolerance(dtype) = 2u.
"""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from normlab import models
from tests.fixtures import ROOT
from tests.keras_fixtures import (
    NORM_LAYERS,
    NORMS,
    cnn,
    fashion_mnist,
    max_rel,
    norm_layer_inputs,
    randomize_weights,
    reference,
)
from tests.numerics import assert_close, tolerance

F32 = tolerance(tf.float32)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _outputs_and_grads(model, x, y, training):
    with tf.GradientTape() as tape:
        out = model(x, training=training)
        loss = LOSS(y, out)
    return [out, *tape.gradient(loss, model.trainable_weights)]


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("norm", list(NORMS))
def test_a_model_is_as_accurate_as_with_keras_layers(norm, training):
    x, y = fashion_mnist(32)
    reference = cnn(keras.layers, norm)
    randomize_weights(reference)
    weights = reference.get_weights()
    ours, exact = cnn(models, norm), cnn(keras.layers, norm, dtype="float64")
    ours.set_weights(weights)
    exact.set_weights([w.astype(np.float64) for w in weights])
    want = _outputs_and_grads(exact, tf.constant(x, tf.float64), y, training)
    theirs = _outputs_and_grads(reference, x, y, training)
    got = _outputs_and_grads(ours, x, y, training)
    for i, (a, b, r) in enumerate(zip(got, theirs, want)):
        err, keras_err = max_rel(a, r), max_rel(b, r)
        assert err <= 2 * keras_err + F32, f"{norm} output {i}: {err:.2e} vs Keras {keras_err:.2e}"


def _fit(model, x, y, optimizer=None, epochs=1):
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    return model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0)


def _wn_model(seed=4):
    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            models.WeightNormalization(
                keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init), True
            ),
            keras.layers.MaxPooling2D(4),
            keras.layers.Flatten(),
            models.WeightNormalization(keras.layers.Dense(10, kernel_initializer=init)),
        ]
    )


@pytest.mark.parametrize("norm", ["batch", "layer", "layer_all_axes", "group", "rms", "weight"])
def test_fit_trains_every_weight_and_save_load_round_trips(norm, tmp_path):
    x, y = fashion_mnist(200)  # not a multiple of the batch: model.fit traces with batch None
    model = _wn_model() if norm == "weight" else cnn(models, norm)
    before = [w.numpy().astype(np.float64) for w in model.weights]
    history = _fit(model, x, y, epochs=2)
    loss = history.history["loss"]
    assert np.isfinite(loss).all() and loss[-1] < loss[0], loss
    for weight, start in zip(model.weights, before):
        changed = np.max(np.abs(weight.numpy().astype(np.float64) - start))
        assert changed > 0, f"{weight.path} did not change in model.fit"  # moving stats too
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    predict = {"batch_size": 64, "verbose": 0}
    np.testing.assert_array_equal(restored.predict(x, **predict), model.predict(x, **predict))
    # Training resumes where it stopped (the data-dependent init is not redone).
    restored.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    for m in (model, restored):
        m.fit(x[:64], y[:64], batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("norm", ["batch", "layer_all_axes", "group", "rms"])
def test_mixed_precision(norm, policy):
    """Weights and moving statistics float32, outputs in the compute dtype, each norm layer
    within one rounding of the NumPy reference on its half-precision input, and fit trains."""
    x, y = fashion_mnist(256)
    model = cnn(models, norm, dtype=policy)
    compute = tf.as_dtype(keras.DTypePolicy(policy).compute_dtype)
    keras_model = cnn(keras.layers, norm, dtype=policy)
    keras_model.set_weights(model.get_weights())
    for keras_layer, layer, h in norm_layer_inputs(keras_model, model, x[:32]):
        assert all(w.dtype == "float32" for w in layer.weights), layer.name
        assert h.dtype == compute
        out = layer(h, training=True)
        assert out.dtype == compute, layer.name
        want = reference(layer, np.asarray(tf.cast(h, tf.float64)), np.zeros(h.shape))[0]
        assert_close(out, want, compute, layer.name)
    optimizer = keras.optimizers.SGD(0.05)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss = _fit(model, x, y, optimizer).history["loss"]
    assert np.isfinite(loss).all()
    assert all(w.dtype == "float32" for w in model.weights)


def test_weight_norm_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = models.WeightNormalization(keras.layers.Dense(4), data_init=True)
        x = np.random.default_rng(5).normal(size=(16, 8)).astype(np.float32)
        out = layer(x, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.bfloat16
    assert all(w.dtype in ("float32", "bool") for w in layer.weights)
    # The data-dependent init, computed in float32: bfloat16 outputs of mean 0 and std 1.
    out = np.asarray(tf.cast(out, tf.float64))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=2e-2)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=2e-2)


@pytest.mark.slow
@pytest.mark.xdist_group("mirrored")
def test_synchronized_batch_norm_on_2_replicas_equals_one_device(mirrored):
    """model.fit, 3 steps of 64 images: MirroredStrategy over 2 logical CPUs (32 + 32) against
    one device (measured by tests/keras_mirrored_check.py in conftest.py's `mirrored`
    subprocess). Tolerance 5e-5 relative: three SGD steps whose gradients sum 50k products in
    another order on each replica (as tests/test_distributed.py); a bug (each replica's own
    statistics, as with synchronized=False) shows as errors of 1e-2 to 1."""
    results = {k[len("keras_fit/") :]: v for k, v in mirrored.items() if k.startswith("keras_fit/")}
    assert results["replicas"] == 2
    for what in ("weights_rel", "moving_rel", "predictions_rel"):
        assert results[f"synchronized/{what}"] <= 5e-5, (what, results)
    assert results["synchronized/moving_copies_differ"] == 0
    assert results["local/weights_rel"] > 1e-2 and results["local/moving_rel"] > 1e-2


def test_readme_use_in_keras_example_runs(tmp_path, monkeypatch):
    """The README's "Use in Keras" code block, run as it is written."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    section = readme.split("## Use in Keras", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert any(type(layer).__name__ in NORM_LAYERS for layer in restored.layers)
    assert type(restored.layers[1]).__module__ == "normlab.models.keras_layers"
