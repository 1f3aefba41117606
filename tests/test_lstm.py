"""The LSTM (--arch=lstm): shapes, initial weights, flags, one training step, save/restore,
train.py end to end. Numerics (recurrent batch norm, parity, float64 reference):
tests/test_lstm_numerics.py."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from normlab.core import registry
from normlab.models import ConfigError, ModelConfig, build_model
from normlab.models.lstm import LSTM
from normlab.trainer import steps
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer
from tests.fixtures import run_program, tiny_splits, write_idx_dataset
from tests.test_trainer import trainer_dataset

UNITS = 16
COMBOS = [(norm, impl) for norm in registry.NORM_CHOICES for impl in registry.IMPLS]


def _config(norm="layer", impl="custom", **kwargs) -> ModelConfig:
    return ModelConfig(arch="lstm", norm=norm, norm_impl=impl, lstm_units=UNITS, **kwargs)


def _x(n=5, rows=28, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(n, rows, 28, 1)), tf.float32)


def _names(module) -> set[str]:
    return {v.name.split(":")[0] for v in module.trainable_variables}


@pytest.mark.parametrize("norm,impl", COMBOS)
def test_shapes_variables_and_taps(norm, impl):
    model = build_model(_config(norm, impl))
    assert isinstance(model, LSTM)
    logits, taps = model.forward(_x(), training=True, tap=True)
    assert logits.shape == (5, 10) and logits.dtype == tf.float32
    assert set(taps) == {f"{n}/{w}" for n in model.hidden_layer_names() for w in ("pre", "post")}
    widths = {"input": 4 * UNITS, "recurrent": 4 * UNITS, "cell": UNITS}
    for name, width in widths.items():
        assert taps[f"{name}/pre"].shape == taps[f"{name}/post"].shape == (5, width)

    # named_layers: disjoint modules that hold every trainable variable once, in forward order.
    named = model.named_layers()
    held = [id(v) for _, module in named for v in module.trainable_variables]
    assert sorted(held) == sorted(id(v) for v in model.trainable_variables)
    assert len(set(held)) == len(held)
    layers = dict(named)
    entry = registry.get(norm)
    if entry is None or entry.target == registry.KERNEL:
        assert [n for n, _ in named] == ["input", "recurrent", "gates", "logits"]
        for name in widths:  # no norm on activations: post is pre
            np.testing.assert_array_equal(taps[f"{name}/post"], taps[f"{name}/pre"])
        kernel = {"v", "g"} if entry else {"kernel"}
        assert _names(layers["input"]) == _names(layers["recurrent"]) == kernel
        assert _names(layers["logits"]) == kernel | {"bias"}
    else:
        assert [n for n, _ in named] == [
            "input",
            "input_norm",
            "recurrent",
            "recurrent_norm",
            "gates",
            "cell_norm",
            "logits",
        ]
        params = {p.name for p in entry.params}
        assert _names(layers["cell_norm"]) == params
        if entry.moving_statistics:
            # Cooijmans et al.: beta_x = beta_h = 0 (b is their bias), gains start at 0.1.
            assert _names(layers["input_norm"]) == _names(layers["recurrent_norm"]) == {"gamma"}
            for name in ("input_norm", "recurrent_norm", "cell_norm"):
                np.testing.assert_array_equal(layers[name].gamma.numpy(), np.float32(0.1))
                assert layers[name].moving_mean.shape == (28, layers[name].channels)
                assert not layers[name].moving_mean.trainable
        else:
            # Ba et al.: each LN with its own gain and bias.
            assert _names(layers["input_norm"]) == _names(layers["recurrent_norm"]) == params
        assert _names(layers["input"]) == _names(layers["recurrent"]) == {"kernel"}
    assert _names(layers["gates"]) == {"bias"}
    assert model.num_parameters() == sum(v.shape.num_elements() for v in model.trainable_variables)


def test_parameter_count_of_the_plain_lstm():
    model = LSTM(ModelConfig(arch="lstm", norm="none"))  # 128 units, as Keras' LSTM(128)
    # Keras LSTM(128) on 28 features: 4 * 128 * (28 + 128 + 1) = 80,384; Dense(10): 1,290.
    assert model.num_parameters() == 80_384 + 1_290


def test_mixed_precision_computes_in_half_and_keeps_float32_variables():
    model = LSTM(_config("batch"), compute_dtype=tf.bfloat16)
    logits, taps = model.forward(_x(), training=True, tap=True)
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
    assert all(t.dtype == tf.bfloat16 for t in taps.values())
    assert all(v.dtype == tf.float32 for v in model.variables)
    assert np.all(np.isfinite(model.recurrent_norm.moving_variance.numpy()))


def test_initial_weights():
    custom = LSTM(_config("layer", "custom", seed=4))
    builtin = LSTM(_config("layer", "builtin", seed=4))
    for a, b in zip(custom.variables, builtin.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # bitwise: same stateless draws
    other = LSTM(_config("layer", "custom", seed=5))
    assert not np.array_equal(custom.input.kernel.numpy(), other.input.kernel.numpy())
    # W_h [U, 4U] orthogonal: orthonormal rows.
    w_h = custom.recurrent.kernel.numpy().astype(np.float64)
    np.testing.assert_allclose(w_h @ w_h.T, np.eye(UNITS), atol=1e-6)
    # W_x Glorot uniform: within +-sqrt(6 / (fan_in + fan_out)).
    assert np.max(np.abs(custom.input.kernel.numpy())) <= np.sqrt(6.0 / (28 + 4 * UNITS))
    # b: forget gate (the second quarter) 1, the others 0.
    expected = np.concatenate([np.zeros(UNITS), np.ones(UNITS), np.zeros(2 * UNITS)])
    np.testing.assert_array_equal(custom.gates.bias.numpy(), expected)


def test_weight_norm_starts_as_the_plain_lstm():
    plain = LSTM(_config("none", seed=2))
    weight = LSTM(_config("weight", seed=2))
    np.testing.assert_array_equal(weight.recurrent.v.numpy(), plain.recurrent.kernel.numpy())
    np.testing.assert_allclose(
        weight.recurrent.g.numpy(),
        np.linalg.norm(plain.recurrent.kernel.numpy(), axis=0),
        rtol=1e-6,
    )
    x = _x()
    np.testing.assert_allclose(
        weight(x, training=False), plain(x, training=False), rtol=1e-5, atol=1e-6
    )


def test_config_refuses_flags_of_the_other_architecture():
    with pytest.raises(ConfigError, match="--widths does not apply to --arch=lstm"):
        ModelConfig(arch="lstm", widths=(16,)).validate()
    with pytest.raises(ConfigError, match="--dense_units does not apply to --arch=lstm"):
        ModelConfig(arch="lstm", dense_units=64).validate()
    with pytest.raises(ConfigError, match="--lstm_units applies to --arch=lstm only"):
        ModelConfig(arch="default", lstm_units=64).validate()
    with pytest.raises(ConfigError, match="--lstm_units applies to --arch=lstm only"):
        ModelConfig(arch="course", lstm_units=64).validate()
    with pytest.raises(ConfigError, match="--wn_init=data does not apply to --arch=lstm"):
        ModelConfig(arch="lstm", norm="weight", wn_init="data").validate()
    ModelConfig(arch="lstm", lstm_units=64).validate()  # its own size is fine
    ModelConfig(arch="default", widths=(16,)).validate()


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="config.arch must be 'lstm'"):
        LSTM(ModelConfig(arch="default"))
    with pytest.raises(ValueError, match="image_shape"):
        LSTM(_config(), image_shape=(28, 28))
    with pytest.raises(ValueError, match="num_classes"):
        LSTM(_config(), num_classes=0)
    model = LSTM(_config())
    with pytest.raises(ValueError, match="features per row"):
        model(tf.zeros([2, 28, 14, 1]), training=False)
    with pytest.raises(ValueError, match=r"x must be \[N, H, W, C\]"):
        model(tf.zeros([2, 28, 28]), training=False)


def _short_splits(rows=6):
    """tiny_splits cut to the first `rows` rows: the same training step, fewer time steps."""
    s = tiny_splits()
    return dataclasses.replace(
        s,
        train_x=s.train_x[:, :rows],
        val_x=s.val_x[:, :rows],
        test_x=s.test_x[:, :rows],
        info=dataclasses.replace(s.info, image_shape=(rows, 28, 1)),
    )


@pytest.mark.parametrize("norm,impl", COMBOS)
def test_one_training_step_changes_every_trainable_variable(tmp_path, norm, impl):
    config = Config(
        arch="lstm", lstm_units=UNITS, norm=norm, norm_impl=impl, batch_size=32, train_steps=1
    )
    trainer = Trainer(config, str(tmp_path / "run"), splits=_short_splits(), log=lambda _: None)
    variables = trainer.train_step.variables
    assert {id(v) for v in variables} == {id(v) for v in trainer.model.trainable_variables}
    before = [v.numpy().copy() for v in variables]
    images, labels = next(iter(trainer_dataset(trainer)))
    metrics = trainer.train_step(images, labels, steps.HISTOGRAMS)
    assert steps.is_finite(metrics)
    for var, old in zip(variables, before, strict=True):
        assert not np.array_equal(var.numpy(), old), f"{var.name} did not change"
    for layer in trainer.model.hidden_layer_names():
        assert np.isfinite(float(metrics[f"activation/{layer}/post_std"]))


@pytest.mark.parametrize("norm", ["batch", "layer", "weight"])
def test_save_restore_gives_identical_logits(tmp_path, norm):
    model = LSTM(_config(norm, seed=1))
    x = _x(8, seed=3)
    model(x, training=True)  # moves batch norm's moving statistics off their initial values
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    restored = LSTM(_config(norm, seed=2))  # other initial weights, overwritten by restore
    assert not np.array_equal(model(x, training=False), restored(x, training=False))
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(model(x, training=False), restored(x, training=False))
    for a, b in zip(model.variables, restored.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    data_dir = tmp_path / "data"
    write_idx_dataset(str(data_dir))
    model_dir = tmp_path / "run"
    result = run_program(
        "train.py",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        "--arch=lstm",
        "--norm=layer",
        f"--lstm_units={UNITS}",
        "--train_steps=4",
        "--batch_size=16",
        "--validation_size=50",
        "--eval_every=4",
        "--checkpoint_every=4",
        "--log_every=2",
        "--eval_batch_size=50",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 4
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["test_loss"])
    assert "--arch=lstm" in (model_dir / "flags.txt").read_text()
