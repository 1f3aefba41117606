"""The trainer: one step trains every variable, checkpoints resume exactly, summaries, metrics."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from normlab.core import registry
from normlab.trainer import steps, summaries
from normlab.trainer.config import Config
from normlab.trainer.errors import RunError, UsageError
from normlab.trainer.optim import SGD, Adam, learning_rate
from normlab.trainer.trainer import Trainer
from tests.fixtures import tiny_splits

SMALL = dict(
    batch_size=32,
    train_steps=12,
    eval_every=6,
    checkpoint_every=5,
    log_every=4,
    summary_every=3,
    histogram_every=6,
    eval_batch_size=50,
    widths=(8, 16),
    dense_units=32,
    learning_rate=0.05,
)


def _trainer(tmp_path, name="run", splits=None, **overrides):
    config = Config(**{**SMALL, **overrides})
    return Trainer(config, str(tmp_path / name), splits=splits or tiny_splits(), log=lambda _: None)


def _weights(trainer):
    return [v.numpy().copy() for v in trainer.model.variables]


@pytest.mark.parametrize("norm", registry.NORM_CHOICES)
@pytest.mark.parametrize("impl", registry.IMPLS)
def test_one_step_changes_every_trainable_variable(tmp_path, norm, impl):
    trainer = _trainer(tmp_path, norm=norm, norm_impl=impl)
    variables = trainer.train_step.variables
    assert {id(v) for v in variables} == {id(v) for v in trainer.model.trainable_variables}
    before = [v.numpy().copy() for v in variables]
    images, labels = next(iter(trainer_dataset(trainer)))
    metrics = trainer.train_step(images, labels)
    assert steps.is_finite(metrics)
    for var, old in zip(variables, before):
        assert not np.array_equal(var.numpy(), old), f"{var.name} did not change"
    assert int(trainer.step) == 1


def trainer_dataset(trainer):
    return trainer.splits.train_batches(
        batch_size=trainer.config.batch_size, seed=trainer.config.seed
    )


def test_training_learns_and_writes_metrics(tmp_path):
    trainer = _trainer(tmp_path, train_steps=60, norm="batch")
    results = trainer.train_and_evaluate()
    assert results["test_accuracy"] > 0.5  # chance is 0.1 on the synthetic task
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_accuracy"] == results["test_accuracy"]
    assert saved["step"] == 60 and len(saved["test_per_class_accuracy"]) == 10


def test_deterministic_trainer_leaves_the_callers_unseeded_random_ops_working(tmp_path):
    """Op determinism is process-wide: a Keras fit after a Trainer in the same process (a
    notebook) shuffles with an unseeded op, which determinism alone refuses."""
    _trainer(tmp_path, deterministic=True)
    assert tf.random.uniform([2]).shape == (2,)
    assert tf.random.shuffle(tf.range(5)).shape == (5,)


def test_same_seed_same_weights_and_restart_equals_uninterrupted(tmp_path):
    splits = tiny_splits()
    uninterrupted = _trainer(tmp_path, "a", splits)
    uninterrupted.train()
    same = _trainer(tmp_path, "b", splits)
    same.train()
    for x, y in zip(_weights(uninterrupted), _weights(same)):
        np.testing.assert_array_equal(x, y)

    # A run that crashes at step 8 (last checkpoint: 5) and is restarted.
    class Crash(Exception):
        pass

    def crash_at_8(line):
        if line.startswith("step 8/"):
            raise Crash()

    config = Config(**SMALL)
    crashed = Trainer(config, str(tmp_path / "c"), splits=splits, log=crash_at_8)
    with pytest.raises(Crash):
        crashed.train()
    resumed = Trainer(config, str(tmp_path / "c"), splits=splits, log=lambda _: None)
    assert int(resumed.step) == 5
    resumed.train()
    for x, y in zip(_weights(uninterrupted), _weights(resumed)):
        np.testing.assert_array_equal(x, y)


def test_save_restore_gives_identical_evaluation(tmp_path):
    splits = tiny_splits()
    trainer = _trainer(tmp_path, splits=splits, norm="batch")
    trainer.train()
    first = trainer.evaluate("test")
    restored = Trainer(
        trainer.config, str(tmp_path / "run"), splits=splits, log=lambda _: None, read_only=True
    )
    second = restored.evaluate("test")
    assert first["loss"] == second["loss"] and first["accuracy"] == second["accuracy"]
    np.testing.assert_array_equal(first["predictions"], second["predictions"])
    # Moving statistics were restored too (they moved away from their initial 0 / 1).
    bn = restored.model.conv_norms[0]
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)


def test_read_only_takes_the_newest_checkpoint_when_the_one_it_found_is_rotated_away(
    tmp_path, monkeypatch
):
    """eval.py on a run that is training: the training deletes its oldest checkpoint at each
    save, so the newest one eval.py found may vanish before it reads it."""
    splits = tiny_splits()
    trainer = _trainer(tmp_path, splits=splits)  # checkpoints at steps 5, 10 and 12
    trainer.train()
    trainer.close()
    directory = tmp_path / "run" / "checkpoints"
    for f in directory.glob("ckpt-5.*"):
        f.unlink()  # rotated away
    newest = tf.train.latest_checkpoint
    looks = []

    def stale_then_newest(path):  # the first looks still see the vanished checkpoint
        looks.append(path)
        return str(directory / "ckpt-5") if len(looks) <= 2 else newest(path)

    monkeypatch.setattr(tf.train, "latest_checkpoint", stale_then_newest)
    reader = Trainer(
        trainer.config, str(tmp_path / "run"), splits=splits, log=lambda _: None, read_only=True
    )
    assert reader.restored.endswith("ckpt-12") and reader.current_step == 12


def test_resume_with_conflicting_flags_is_refused(tmp_path):
    splits = tiny_splits()
    _trainer(tmp_path, splits=splits).train()
    with pytest.raises(UsageError, match="--norm: batch -> layer"):
        _trainer(tmp_path, splits=splits, norm="layer")
    # Bookkeeping flags may change.
    t = _trainer(tmp_path, splits=splits, train_steps=15, log_every=5)
    assert int(t.step) == 12


def test_checkpoints_kept_and_debris_of_killed_saves_removed(tmp_path):
    splits = tiny_splits()
    trainer = _trainer(tmp_path, splits=splits, max_to_keep=2)
    trainer.train()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("*.index")) == ["ckpt-10.index", "ckpt-12.index"]
    # What a kill mid-save leaves: a temp directory, files of a checkpoint never recorded,
    # and (killed between recording and deleting) one recorded checkpoint too many.
    (ckpt_dir / "ckpt-15_temp").mkdir()
    (ckpt_dir / "ckpt-15_temp" / "part").write_text("half a save")
    for suffix in (".index", ".data-00000-of-00001"):
        (ckpt_dir / f"ckpt-14{suffix}").write_bytes((ckpt_dir / f"ckpt-12{suffix}").read_bytes())
        (ckpt_dir / f"ckpt-5{suffix}").write_bytes((ckpt_dir / f"ckpt-10{suffix}").read_bytes())
    state = tf.train.get_checkpoint_state(str(ckpt_dir))
    tf.compat.v1.train.update_checkpoint_state(
        str(ckpt_dir),
        state.model_checkpoint_path,
        all_model_checkpoint_paths=[str(ckpt_dir / "ckpt-5")]
        + list(state.all_model_checkpoint_paths),
        all_model_checkpoint_timestamps=[state.all_model_checkpoint_timestamps[0] - 1]
        + list(state.all_model_checkpoint_timestamps),
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    lines = []
    resumed = Trainer(trainer.config, str(tmp_path / "run"), splits=splits, log=lines.append)
    assert not (ckpt_dir / "ckpt-15_temp").exists()
    assert sorted(p.name for p in ckpt_dir.glob("*.index")) == ["ckpt-10.index", "ckpt-12.index"]
    assert [os.path.basename(p) for p in resumed.manager.checkpoints] == ["ckpt-10", "ckpt-12"]
    assert int(resumed.step) == 12
    # The manager still rotates: two more saves leave the newest two.
    resumed.total_steps = 16
    resumed.train()
    assert sorted(p.name for p in ckpt_dir.glob("*.index")) == ["ckpt-15.index", "ckpt-16.index"]
    text = "\n".join(lines)
    assert "ckpt-15_temp" in text and "ckpt-14" in text and "ckpt-5" in text


def test_resumed_summaries_have_each_step_once(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    splits = tiny_splits()

    class Crash(Exception):
        pass

    def crash_at_8(line):
        if line.startswith("step 8/"):
            raise Crash()

    config = Config(**{**SMALL, "summary_every": 1})
    crashed = Trainer(config, str(tmp_path / "run"), splits=splits, log=crash_at_8)
    with pytest.raises(Crash):
        crashed.train()
    crashed.flush()  # what a killed process's writer had flushed: steps 1..8
    lines = []
    resumed = Trainer(config, str(tmp_path / "run"), splits=splits, log=lines.append)
    resumed.train_and_evaluate()  # cuts the events back to step 5 before training on
    assert any("dropped" in line and "after step 5" in line for line in lines), lines
    acc = event_accumulator.EventAccumulator(
        str(tmp_path / "run" / "train"), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    assert [e.step for e in acc.Tensors(summaries.LOSS)] == list(range(1, 13))


def test_summaries_have_the_documented_tags(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    trainer = _trainer(tmp_path, norm="weight")
    trainer.train_and_evaluate()

    def tags(sub):
        acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / sub))
        acc.Reload()
        return set(acc.Tags()["tensors"])

    train = tags("train")
    for tag in (
        summaries.LOSS,
        summaries.ACCURACY,
        summaries.LEARNING_RATE,
        summaries.STEPS_PER_SEC,
        summaries.IMAGES_PER_SEC,
        summaries.GRAD_NORM_GLOBAL,
        summaries.grad_norm("conv1"),
        summaries.activation("conv1", "pre", "mean"),
        summaries.activation("dense1", "post", "std"),
        summaries.param_norm("conv1", "g"),
        summaries.weights_histogram("conv1", "v"),
        summaries.gradients_histogram("conv1", "v"),
        summaries.activations_histogram("conv1", "pre"),
    ):
        assert tag in train, tag
    # Validation on the training curves' tags, so TensorBoard overlays them; final metrics.
    assert {
        summaries.LOSS,
        summaries.ACCURACY,
        summaries.FINAL_TEST_ACCURACY,
        summaries.FINAL_VAL_LOSS,
    } <= tags("eval")


def test_non_finite_loss_stops_with_the_layer_and_keeps_the_checkpoint(tmp_path):
    splits = tiny_splits()
    trainer = _trainer(tmp_path, splits=splits, norm="none", train_steps=12)
    trainer.train()
    # Poison conv2's kernel: its activations become non-finite.
    trainer.model.convs[1].kernel.assign(tf.fill(trainer.model.convs[1].kernel.shape, np.inf))
    trainer.total_steps = 20
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    with pytest.raises(RunError, match=r"step 13 .*first non-finite layer: conv2") as caught:
        trainer.train()
    assert (caught.value.step, caught.value.layer) == (13, "conv2")
    for var, old in zip(trainer.model.trainable_variables, before):
        np.testing.assert_array_equal(var.numpy(), old)  # the bad step applied nothing
    assert trainer.manager.latest_checkpoint.endswith("ckpt-12")


def test_sgd_and_adam_updates_by_hand():
    w = tf.Variable([1.0, -2.0])
    sgd = SGD([w], momentum=0.5)
    sgd.apply([tf.constant([0.5, 1.0])], [w], tf.constant(0.1))
    np.testing.assert_allclose(w.numpy(), [0.95, -2.1])
    sgd.apply([tf.constant([0.5, 1.0])], [w], tf.constant(0.1))  # m = 0.5 m + g = 1.5 g
    np.testing.assert_allclose(w.numpy(), [0.875, -2.25], rtol=1e-6)
    w = tf.Variable([1.0])
    adam = Adam([w])
    adam.apply([tf.constant([0.2])], [w], tf.constant(0.01))
    # First Adam step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr.
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.01 * 0.2 / (0.2 + 1e-7)], rtol=1e-6)


def test_learning_rate_schedules():
    def lr(step, **kw):
        args = dict(peak=1.0, total_steps=100, warmup_steps=0, schedule="cosine")
        return float(learning_rate(step, **{**args, **kw}))

    assert lr(0) == 1.0 and abs(lr(50) - 0.5) < 1e-6 and lr(100) < 1e-6
    assert lr(10, warmup_steps=20) == pytest.approx(11 / 20)
    assert lr(70, schedule="constant") == 1.0


def test_config_flagfile_round_trip_and_validation(tmp_path):
    config = Config(norm="group", groups=4, augment=True, learning_rate=0.125, data_dir="/d")
    path = tmp_path / "flags.txt"
    path.write_text(config.to_flagfile())
    assert Config.from_flagfile(str(path)) == config
    for bad, message in [
        (dict(batch_size=0), "--batch_size must be >= 1"),
        (dict(norm="batch", batch_size=1), "needs --batch_size >= 2"),
        (dict(learning_rate=-1.0), "--learning_rate must be > 0"),
        (dict(norm="bogus"), "is not one of"),
        (dict(train_steps=-5), "--train_steps must be >= 0"),
        (dict(widths="8,x"), "comma-separated integers"),
        (dict(wn_init="data", norm="batch"), "applies to --norm=weight"),
    ]:
        with pytest.raises(UsageError, match=message):
            dataclasses.replace(config, **bad).validate()
    path.write_text("--norm=batch\n--widths=8,x\n")
    with pytest.raises(UsageError, match="--widths takes comma-separated integers"):
        Config.from_flagfile(str(path))
    path.write_text("--norm=batch\n--nonsense=3\n")
    with pytest.raises(UsageError, match="unknown setting --nonsense"):
        Config.from_flagfile(str(path))


def test_model_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        Trainer(Config(**SMALL), str(tmp_path / "file"), splits=tiny_splits())
    assert (tmp_path / "file").read_text() == "x"


def test_wn_data_init_runs_on_the_first_batch(tmp_path):
    lines = []
    config = Config(**{**SMALL, "norm": "weight", "wn_init": "data", "train_steps": 2})
    trainer = Trainer(config, str(tmp_path / "run"), splits=tiny_splits(), log=lines.append)
    trainer.train()
    assert any("data-dependent init" in line for line in lines)
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "ckpt-2.index")
