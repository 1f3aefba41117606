"""The fast training loop (batches made inside the compiled loop, the fused momentum update)
trains bitwise the same weights as the loop before it (a tf.data iterator per step, the
update op by op), and resumes bitwise."""

import numpy as np
import pytest

from normlab.data.pipeline import InGraphBatches
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer
from tests.fixtures import tiny_splits

# Events at steps that do not divide each other; every run crosses epoch boundaries.
SMALL = dict(train_steps=40, eval_every=1000, log_every=10, summary_every=7, histogram_every=1000,
             checkpoint_every=20, widths=(8,), dense_units=16, eval_batch_size=64,
             steps_per_loop=8)  # fmt: skip


def _trainer(tmp_path, name, fast: bool, **overrides):
    config = Config(**{**SMALL, **overrides})
    n_train = 4 * config.batch_size + 3 if config.batch_size > 16 else 48
    trainer = Trainer(config, str(tmp_path / name), splits=tiny_splits(n_train=n_train),
                      log=lambda _: None)  # fmt: skip
    if not fast:  # the loop before: tf.data's iterator, the update op by op
        trainer.in_graph_input = False
        trainer.optimizer.fused = False
    return trainer


def _state(trainer):
    return [v.numpy() for v in trainer.model.variables] + [
        v.numpy() for v in trainer.optimizer.variables
    ]


@pytest.mark.parametrize(
    "batch_size, augment", [(2, False), (2, True), (128, False)], ids=["b2", "b2-augment", "b128"]
)
def test_the_fast_loop_trains_bitwise_the_same_weights_as_the_loop_before(
    tmp_path, batch_size, augment
):
    states = {}
    for fast in (False, True):
        trainer = _trainer(tmp_path, f"fast{fast}", fast, norm="batch", batch_size=batch_size,
                           augment=augment)  # fmt: skip
        trainer.train()
        assert trainer.current_step == 40
        states[fast] = _state(trainer)
    assert len(states[True]) == len(states[False]) > 10
    for old, new in zip(states[False], states[True]):
        assert np.array_equal(old, new)  # bitwise


def test_the_fast_loop_resumes_bitwise(tmp_path):
    # A constant rate: the first part is a run of 20 steps, extended to 40 when resumed.
    whole = _trainer(tmp_path, "whole", True, norm="batch", batch_size=2, lr_schedule="constant")
    whole.train()
    first = _trainer(tmp_path, "parts", True, norm="batch", batch_size=2, train_steps=20,
                     lr_schedule="constant")  # fmt: skip
    first.train()
    first.close()
    # Resumed at step 20, in the middle of an epoch (24 steps each), with a new Trainer.
    second = _trainer(tmp_path, "parts", True, norm="batch", batch_size=2, lr_schedule="constant")
    assert second.current_step == 20
    second.train()
    for a, b in zip(_state(whole), _state(second)):
        assert np.array_equal(a, b)


def test_in_graph_batches_are_the_tf_data_batches_across_epochs_and_from_any_step():
    splits = tiny_splits(n_train=21)
    common = dict(batch_size=4, seed=3, pixel_mean=splits.pixel_mean,
                  pixel_std=splits.pixel_std, augment=True)  # fmt: skip
    x, y = splits.train_x, splits.train_y
    expected = list(splits.train_batches(batch_size=4, seed=3, augment=True).take(12))
    source = InGraphBatches(x, y, **common)
    got = [next(source) for _ in range(12)]  # 5 steps per epoch: three epochs
    for (ex, ey), (gx, gy) in zip(expected, got):
        assert np.array_equal(ex.numpy(), gx.numpy()) and np.array_equal(ey.numpy(), gy.numpy())
    source.reset(7)  # back into an earlier epoch
    images, labels = next(source)
    assert np.array_equal(images.numpy(), expected[7][0].numpy())
    assert np.array_equal(labels.numpy(), expected[7][1].numpy())
