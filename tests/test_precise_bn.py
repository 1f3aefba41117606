"""Precise batch norm (models/population.py) against NumPy float64: the CNN's layers, the LSTM's
per-time-step statistics, a Keras model, and the trainer's --bn_population=precise."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from normlab.core import reference as ref
from normlab.models import population as precise
from normlab.models.cnn import CNN
from normlab.models.config import ModelConfig
from normlab.models.lstm import LSTM
from tests.numerics import assert_close

F32 = tf.float32
EPS = 1e-3


def _batches(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.3, 1.2, shape).astype(np.float32) for _ in range(count)]


def _normalized(pre, mean, variance, module):
    beta = 0.0 if module.beta is None else module.beta.numpy()
    return (pre - mean) / np.sqrt(variance + EPS) * module.gamma.numpy() + beta


def _snapshot(model):
    return [v.numpy().copy() for v in model.variables]


def test_precise_bn_of_the_cnn_equals_numpy_and_inference_uses_it():
    """Each layer's statistics are NumPy's over the values its training-mode input held in
    every batch (NHWC for convs, [N, C] for the dense layer), nothing moves while they are
    computed, and inference then normalizes with them."""
    model = CNN(ModelConfig(widths=(4, 6), dense_units=8), (8, 8, 1))
    xs = _batches((16, 8, 8, 1), 5)
    before = _snapshot(model)
    statistics, examples = precise.for_model(model)(xs)
    assert examples == 80
    for a, b in zip(_snapshot(model), before, strict=True):
        np.testing.assert_array_equal(a, b)  # no weight, no moving average changed
    layers = [(norm, f"conv{i + 1}") for i, norm in enumerate(model.conv_norms)]
    layers.append((model.dense_norm, "dense1"))
    taps = [model.forward(x, training=True, tap=True)[1] for x in xs]
    wanted = {}
    for module, name in layers:
        pre = [t[f"{name}/pre"].numpy() for t in taps]
        wanted[name] = ref.population_statistics(pre, tuple(range(pre[0].ndim - 1)))
        assert_close(statistics[module][0], wanted[name][0], F32, f"{name} mean")
        assert_close(statistics[module][1], wanted[name][1], F32, f"{name} variance")
    precise.assign(statistics)
    _, taps = model.forward(xs[0], training=False, tap=True)
    for module, name in layers:
        pre = taps[f"{name}/pre"].numpy().astype(np.float64)
        want = _normalized(pre, *wanted[name], module)
        assert_close(taps[f"{name}/post"], want, F32, f"{name} inference")


def test_precise_bn_of_the_lstm_is_per_time_step():
    """Recurrent batch norm: one mean and variance per time step and channel, NumPy's over the
    step's values in every batch; inference normalizes step t with step t's."""
    config = ModelConfig(arch="lstm", lstm_units=4, norm="batch")
    model = LSTM(config, (5, 3, 1))
    xs = _batches((12, 5, 3, 1), 4, seed=1)
    statistics, _ = precise.for_model(model)(xs)
    modules = {"input": model.input_norm, "recurrent": model.recurrent_norm}
    modules["cell"] = model.cell_norm
    traces = [model.time_steps(x, training=True) for x in xs]
    wanted = {}
    for name, module in modules.items():
        pre = [t[f"{name}/pre"].numpy() for t in traces]  # [N, T, C] each
        wanted[name] = ref.population_statistics(pre, (0,))  # [T, C]
        assert statistics[module][0].shape == (5, module.channels)
        for got, want in zip(statistics[module], wanted[name]):
            # The reference's activations come from another (eager) run of the cell, whose
            # float32 rounding differs from the compiled one's over up to T recurrent steps.
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.max(np.abs(want)))
    precise.assign(statistics)
    trace = model.time_steps(xs[0], training=False)
    for name, module in modules.items():
        pre = trace[f"{name}/pre"].numpy().astype(np.float64)
        want = _normalized(pre, *wanted[name], module)
        assert_close(trace[f"{name}/post"], want, F32, f"{name} inference")


def test_keras_models_get_precise_statistics():
    import keras

    from normlab import models

    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3)(inputs)
    bn1 = models.BatchNormalization(moving_average="bias_corrected")
    hidden = keras.layers.Dense(5)(keras.layers.Flatten()(keras.layers.ReLU()(bn1(conv))))
    bn2 = models.BatchNormalization()
    model = keras.Model(inputs, bn2(hidden))
    xs = _batches((10, 6, 6, 2), 3, seed=2)
    model(xs[0], training=True)  # one update: moving_count 1
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate(xs), np.zeros(30))).batch(10)
    assert models.recompute_batch_norm_statistics(model, dataset, examples=25) == 30
    assert int(bn1.moving_count.numpy()) == 1  # collected, not updated
    got = {bn: (bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in (bn1, bn2)}
    probe = keras.Model(inputs, [conv, hidden])  # its training-mode calls move bn1's averages
    outs = [[o.numpy() for o in probe(x, training=True)] for x in xs]
    for layer, k, axes in ((bn1, 0, (0, 1, 2)), (bn2, 1, (0,))):
        mean, variance = ref.population_statistics([o[k] for o in outs], axes)
        assert_close(got[layer][0], mean, F32, f"{layer.name} mean")
        assert_close(got[layer][1], variance, F32, f"{layer.name} variance")
    with pytest.raises(ValueError, match="Keras' own BatchNormalization"):
        keras_bn = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
        models.recompute_batch_norm_statistics(keras_bn, [np.ones((4, 3), np.float32)])
    with pytest.raises(ValueError, match="no batch"):
        models.recompute_batch_norm_statistics(model, [])


def test_trainer_evaluates_with_precise_statistics_and_keeps_the_moving_ones(tmp_path):
    from normlab.trainer import steps
    from normlab.trainer.config import Config
    from normlab.trainer.trainer import Trainer
    from tests.fixtures import tiny_splits

    splits = tiny_splits()
    config = Config(
        widths=(4,),
        dense_units=8,
        batch_size=32,
        train_steps=3,
        bn_population="precise",
        precise_bn_examples=50,
        eval_every=100,
        checkpoint_every=100,
    )
    trainer = Trainer(config, str(tmp_path / "run"), splits=splits, log=lambda _: None)
    trainer.train()
    moving = [m.moving_mean.numpy().copy() for m in precise.batch_norm_modules(trainer.model)]
    result = trainer.evaluate("test")
    for m, before in zip(precise.batch_norm_modules(trainer.model), moving, strict=True):
        np.testing.assert_array_equal(m.moving_mean.numpy(), before)  # put back
    # By hand: the first 2 training batches (64 >= 50 examples), in the seed's order.
    batches = splits.train_batches(batch_size=32, seed=config.seed).take(2)
    statistics, examples = precise.for_model(trainer.model)(x for x, _ in batches)
    assert examples == 64
    dataset, y = splits.eval_batches("test", config.eval_batch_size)
    with precise.using(statistics):
        want = steps.evaluate(trainer.eval_step, dataset, y, splits.info.num_classes)
    assert result["loss"] == want["loss"] and result["accuracy"] == want["accuracy"]
    # The moving averages (3 plain updates from 0 and 1) give another loss.
    trainer.config = dataclasses.replace(trainer.config, bn_population="moving_average")
    assert trainer.evaluate("test")["loss"] != result["loss"]
    trainer.close()


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(norm="layer", bn_population="precise"), "applies to --norm=batch"),
        (dict(bn_population="precise", strategy="mirrored"), "one device"),
        (dict(norm="layer", bn_moving_average="bias_corrected"), "applies to --norm=batch"),
    ],
)
def test_population_settings_refuse_what_they_cannot_do(settings, match):
    from normlab.trainer.config import Config
    from normlab.trainer.errors import UsageError

    with pytest.raises(UsageError, match=match):
        Config(**settings).validate()
