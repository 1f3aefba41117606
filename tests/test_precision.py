"""--precision: mixed bfloat16 and float16 training, loss scaling, and checkpoints across
precisions."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from normlab.trainer import optim, steps, summaries
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer
from tests.fixtures import tiny_splits

SMALL = dict(
    batch_size=32,
    train_steps=6,
    eval_every=6,
    checkpoint_every=6,
    log_every=3,
    summary_every=3,
    histogram_every=100,
    eval_batch_size=64,
    widths=(8, 16),
    dense_units=32,
)


def _trainer(path, **overrides) -> Trainer:
    return Trainer(
        Config(**{**SMALL, **overrides}), str(path), splits=tiny_splits(), log=lambda _: None
    )


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("norm", ["batch", "layer", "weight"])
def test_mixed_precision_trains_with_float32_state(tmp_path, precision, norm):
    """Activations in the half dtype; variables, moving statistics, optimizer slots float32;
    training changes every weight and ends with a finite loss."""
    trainer = _trainer(tmp_path / "run", precision=precision, norm=norm)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.train()
    for v, old in zip(trainer.model.trainable_variables, before):
        assert v.dtype == tf.float32 and not np.array_equal(v.numpy(), old), v.name
    assert {v.dtype for v in trainer.model.variables} == {tf.float32}
    result = trainer.evaluate("val")
    assert math.isfinite(result["loss"])


def test_float16_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    scale = optim.DynamicLossScale(initial=2.0**10, period=3)
    scale.update(tf.constant(False))
    assert float(scale.scale) == 2.0**9 and int(scale.good_steps) == 0
    for _ in range(2):
        scale.update(tf.constant(True))
    assert float(scale.scale) == 2.0**9 and int(scale.good_steps) == 2
    scale.update(tf.constant(True))
    assert float(scale.scale) == 2.0**10 and int(scale.good_steps) == 0
    for _ in range(20):
        scale.update(tf.constant(False))
    assert float(scale.scale) == 1.0  # never below 1


def test_float16_overflow_skips_the_update_but_counts_the_step(tmp_path):
    """A loss scale so large the float16 gradients overflow: the step applies nothing, halves
    the scale, still advances the step counter (the data order stays a function of the step),
    and the loop does not stop; later steps train."""
    trainer = _trainer(tmp_path / "run", precision="mixed_float16", norm="batch")
    trainer.train_step.loss_scale.scale.assign(2.0**60)
    images, labels = next(iter(trainer.splits.train_batches(batch_size=32, seed=0)))
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    metrics = trainer.train_step(images, labels)
    assert float(metrics[summaries.LOSS_SCALE_OVERFLOW]) == 1.0 and steps.is_finite(metrics)
    assert int(trainer.step) == 1 and float(trainer.train_step.loss_scale.scale) == 2.0**59
    for v, old in zip(trainer.model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), old)
    trainer.train_step.loss_scale.scale.assign(2.0**8)
    metrics = trainer.train_step(images, labels)
    assert float(metrics[summaries.LOSS_SCALE_OVERFLOW]) == 0.0 and int(trainer.step) == 2
    assert not np.array_equal(trainer.model.trainable_variables[0].numpy(), before[0])


def test_a_checkpoint_evaluates_under_another_precision(tmp_path):
    """Weights are float32 in every precision, so a run trained in mixed bfloat16 restores into
    a float32 model (and the other way), and evaluates alike within bfloat16's rounding."""
    trained = _trainer(tmp_path / "run", precision="mixed_bfloat16", norm="batch")
    trained.train()
    bf16 = trained.evaluate("test")
    config = dataclasses.replace(trained.config, precision="float32")
    f32 = Trainer(
        config, str(tmp_path / "run"), splits=trained.splits, log=lambda _: None, read_only=True
    ).evaluate("test")
    assert abs(f32["loss"] - bf16["loss"]) < 0.05 * bf16["loss"]
    assert np.mean(f32["predictions"] == bf16["predictions"]) > 0.9


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_float16_on_a_cpu_says_it_is_slow_and_names_the_fast_precision(tmp_path, precision):
    lines = []
    config = Config(**{**SMALL, "train_steps": 1, "precision": precision})
    Trainer(config, str(tmp_path / "run"), splits=tiny_splits(), log=lines.append).train()
    noted = any("mixed_bfloat16 is the fast one" in line for line in lines)
    on_cpu = not tf.config.list_physical_devices("GPU")
    assert noted == (precision == "mixed_float16" and on_cpu), lines
