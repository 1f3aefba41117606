"""Batch norm's population statistics against NumPy float64: bias-corrected moving averages
(core, modules, Keras layer, checkpoints) and precise BN (core, CNN, LSTM per step, Keras)."""

import numpy as np
import pytest
import tensorflow as tf

from normlab import core, models
from normlab.core import population
from normlab.core import reference as ref
from normlab.models import population as precise
from normlab.models.config import ModelConfig
from normlab.models.recurrent_norms import RecurrentBatchNorm
from tests.numerics import assert_close

F32 = tf.float32
NHWC = (0, 1, 2)


def _batches(shape, count, seed=0, loc=0.7, scale=1.9):
    rng = np.random.default_rng(seed)
    return [rng.normal(loc, scale, shape).astype(np.float32) for _ in range(count)]


# -- bias-corrected moving averages -----------------------------------------------------------


@pytest.mark.parametrize("updates", [1, 2, 7, 300])
@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_bias_corrected_update_is_adams_formula(updates, momentum):
    """After t updates the estimate is Adam's m_t / (1 - momentum^t) of a zero-started
    accumulator (catches a missing or off-by-one correction: count t instead of t + 1)."""
    values = [v.mean(NHWC) for v in _batches((4, 3, 3, 5), updates, loc=3.0)]
    estimate = tf.constant([0.0] * 5)  # the initial value gets weight 0 at the first update
    for t, value in enumerate(values, 1):
        estimate = core.bias_corrected_update(estimate, value, momentum, t)
    want = ref.bias_corrected_moving_average(values, momentum)[-1]
    assert_close(estimate, want, F32, f"after {updates} updates")


def test_first_bias_corrected_update_is_the_batch_statistic():
    x = tf.constant([2.5, -1.0, 7.0])
    np.testing.assert_array_equal(core.bias_corrected_update(tf.ones([3]), x, 0.99, 1), x)


@pytest.mark.parametrize("moving_average", ["plain", "bias_corrected"])
def test_batch_norm_module_moves_by_its_rule(moving_average):
    bn = models.BatchNorm(5, moving_average=moving_average)
    xs = _batches((6, 4, 4, 5), 4, loc=3.0)
    for x in xs:
        bn(x, training=True)
    for moving, stat in ((bn.moving_mean, np.mean), (bn.moving_variance, np.var)):
        values = [stat(x.astype(np.float64), axis=NHWC) for x in xs]
        if moving_average == "plain":
            want = ref.moving_average(values, 0.99, 0.0 if stat is np.mean else 1.0)[-1]
            assert bn.moving_count is None  # Keras' layout: no counter variable
        else:
            want = ref.bias_corrected_moving_average(values, 0.99)[-1]
            assert int(bn.moving_count.numpy()) == len(xs)
        assert_close(moving, want, F32, moving.name)


def test_recurrent_bias_corrected_counts_each_step():
    """A sequence shorter than the trained length moves (and counts) its own steps only."""
    norm = RecurrentBatchNorm(
        4,
        3,
        train_fn=core.batch_norm_and_moments,
        inference_fn=core.batch_norm_inference,
        moving_average="bias_corrected",
    )
    full = _batches((8, 3, 4), 2, seed=1)
    short = _batches((8, 2, 4), 1, seed=2)[0]
    for x in full:
        norm(x, training=True)
    norm(short, training=True)
    np.testing.assert_array_equal(norm.moving_count.numpy(), [3, 3, 2])
    for step in range(3):
        seqs = [x[:, step] for x in full] + ([short[:, step]] if step < 2 else [])
        means = [s.astype(np.float64).mean(0) for s in seqs]
        want = ref.bias_corrected_moving_average(means, 0.99)[-1]
        assert_close(norm.moving_mean[step], want, F32, f"step {step}")


def test_the_update_count_checkpoints_and_resumes(tmp_path):
    """3 updates, a checkpoint, a fresh module restored from it, 2 more: the same as 5 in a
    row (catches a counter that is not saved, or restarts at 0: its 4th update would take the
    batch's statistics whole)."""
    xs = _batches((6, 5), 5, loc=2.0)
    straight = models.BatchNorm(5, moving_average="bias_corrected")
    first = models.BatchNorm(5, moving_average="bias_corrected")
    for x in xs:
        straight(x, training=True)
    for x in xs[:3]:
        first(x, training=True)
    path = tf.train.Checkpoint(bn=first).save(str(tmp_path / "ckpt"))
    resumed = models.BatchNorm(5, moving_average="bias_corrected")
    tf.train.Checkpoint(bn=resumed).restore(path).assert_consumed()
    assert int(resumed.moving_count.numpy()) == 3
    for x in xs[3:]:
        resumed(x, training=True)
    for a, b in ((resumed.moving_mean, straight.moving_mean), (resumed.moving_count, None)):
        if b is None:
            assert int(a.numpy()) == 5
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_keras_layer_bias_corrected_and_its_saved_counter(tmp_path):
    import keras

    xs = _batches((6, 4, 4, 3), 3, loc=-2.0)
    layer = models.BatchNormalization(moving_average="bias_corrected")
    model = keras.Sequential([keras.Input((4, 4, 3)), layer])
    for x in xs:
        model(x, training=True)
    names = [w.path.split("/")[-1] for w in layer.weights]
    assert names == ["gamma", "beta", "moving_mean", "moving_variance", "moving_count"]
    values = [x.astype(np.float64).var(axis=NHWC) for x in xs]
    assert_close(layer.moving_variance, ref.bias_corrected_moving_average(values, 0.99)[-1], F32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.layers[0].moving_count.numpy()) == 3
    assert loaded.layers[0].moving_average == "bias_corrected"
    # The default stays Keras' drop-in: four weights, Keras' config keys.
    plain = models.BatchNormalization()
    plain.build((None, 3))
    assert len(plain.weights) == 4 and "moving_average" not in plain.get_config()


# -- precise BN: core -------------------------------------------------------------------------


@pytest.mark.parametrize("offset, dtype", [(0.0, tf.float32), (1e4, tf.float64)])
def test_population_moments_equal_numpy_over_the_batches(offset, dtype):
    """NHWC batches of equal size: the pooled statistics equal NumPy's over all values, and
    the paper's average of batch means / of batch variances plus the variance of the means.
    At a large offset, with float64 batch moments so that only the merge can err (float32
    batch means are rounded by |offset| * 2^-24 before any merge). The merge's running mean
    is rounded by |offset| * 2^-53, which moves the variance by ~|offset| * 2^-53 * |d| / var
    (d: a batch mean's deviation), ~1e-13 here; a one-pass E[x^2] - E[x]^2 merge loses
    ~offset^2 * 2^-53 / var, ~3e-9: the tolerance 1e-11 tells them apart."""
    xs = [x.astype(dtype.as_numpy_dtype) for x in _batches((8, 5, 5, 6), 6, loc=offset + 0.5)]
    means, variances = zip(*(core.moments(x, list(NHWC)) for x in xs))
    mean, variance = core.population_moments(means, variances, [8 * 25] * len(xs), dtype)
    want_mean, want_var = ref.population_statistics(xs, NHWC)
    if dtype == tf.float32:
        assert_close(mean, want_mean, dtype, "mean")
        assert_close(variance, want_var, dtype, "variance")
    else:
        np.testing.assert_allclose(mean, want_mean, rtol=1e-15)
        np.testing.assert_allclose(variance, want_var, rtol=1e-11)
    paper_mean, paper_var = ref.averaged_batch_statistics(xs, NHWC)
    np.testing.assert_allclose(paper_var, want_var, rtol=1e-12)
    np.testing.assert_allclose(paper_mean, want_mean, rtol=1e-12)


def test_population_moments_weight_batches_by_their_size():
    xs = [_batches((n, 4), 1, seed=n)[0] for n in (16, 16, 3)]  # a short last batch
    stats = [core.moments(x, [0]) for x in xs]
    mean, variance = core.population_moments(*zip(*stats), [16, 16, 3])
    want_mean, want_var = ref.population_statistics(xs, (0,))
    assert_close(mean, want_mean, F32, "mean")
    assert_close(variance, want_var, F32, "variance")


def test_population_moments_refuse_no_batch():
    with pytest.raises(ValueError, match="at least one"):
        core.population_moments([], [], [])
    with pytest.raises(tf.errors.InvalidArgumentError, match="no batch"):
        population.finalize(population.empty([3]))


def test_a_resumed_training_run_continues_the_count(tmp_path):
    """The trainer's checkpoint holds moving_count: 3 steps, a new Trainer resuming to 6 ends
    with the moving statistics of 6 steps in a row (a count restarting at 0 would replace
    them by step 4's batch statistics)."""
    import dataclasses

    from normlab.trainer.config import Config
    from normlab.trainer.trainer import Trainer
    from tests.fixtures import tiny_splits

    splits = tiny_splits()
    config = Config(
        widths=(4,),
        dense_units=8,
        batch_size=32,
        lr_schedule="constant",  # the same rates whether the run is 6 steps or 3 + 3
        bn_moving_average="bias_corrected",
        eval_every=100,
        checkpoint_every=3,
    )

    def trained(name, steps):
        trainer = Trainer(
            dataclasses.replace(config, train_steps=steps),
            str(tmp_path / name),
            splits=splits,
            log=lambda _: None,
        )
        trainer.train()
        trainer.close()
        return {n: m for n, m in trainer.model.named_layers() if n.endswith("_norm")}

    straight = trained("straight", 6)
    assert int(trained("resumed", 3)["conv1_norm"].moving_count.numpy()) == 3
    resumed = trained("resumed", 6)
    for name, module in straight.items():
        assert int(resumed[name].moving_count.numpy()) == 6
        for attr in ("moving_mean", "moving_variance"):
            np.testing.assert_array_equal(
                getattr(resumed[name], attr).numpy(), getattr(module, attr).numpy()
            )
