"""--steps_per_loop: steps in compiled loops change nothing but the speed."""

import os

import numpy as np
import pytest

from normlab.trainer import summaries
from normlab.trainer.config import Config
from normlab.trainer.errors import NonFiniteError
from normlab.trainer.trainer import Trainer
from tests.fixtures import tiny_splits

# Events at steps that do not divide each other, so loops of 8 end early at many of them.
EVENTS = dict(
    batch_size=16, train_steps=45, eval_every=20, log_every=10, summary_every=7,
    histogram_every=25, checkpoint_every=15, widths=(8,), dense_units=16, eval_batch_size=32,
)  # fmt: skip


def _run(tmp_path, name, **overrides):
    config = Config(**{**EVENTS, **overrides})
    lines = []
    trainer = Trainer(
        config, str(tmp_path / name), splits=tiny_splits(n_train=512), log=lines.append
    )
    return trainer, lines


def _scalars(run_dir):
    out = {}
    for sub in (summaries.TRAIN_DIR, summaries.EVAL_DIR):
        for tag, (steps, values) in summaries.read_scalars(os.path.join(run_dir, sub)).items():
            if "per_sec" not in tag:  # throughput differs, of course
                out[f"{sub}/{tag}"] = (steps.tolist(), values.tolist())
    return out


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_loops_of_8_train_the_same_weights_and_write_the_same_steps_as_single_steps(tmp_path, norm):
    runs = {}
    for n in (1, 8):
        trainer, lines = _run(tmp_path, f"n{n}", norm=norm, steps_per_loop=n)
        trainer.train_and_evaluate()
        runs[n] = (
            [v.numpy() for v in trainer.model.variables],
            sorted(os.listdir(tmp_path / f"n{n}" / "checkpoints")),
            _scalars(str(tmp_path / f"n{n}")),
            [line.split("  ")[0:3] for line in lines if line.startswith("step ")],
        )
    (w1, c1, s1, l1), (w8, c8, s8, l8) = runs[1], runs[8]
    assert all(np.array_equal(a, b) for a, b in zip(w1, w8))  # bitwise
    assert c1 == c8 and "ckpt-15.index" in c1
    assert s1 == s8 and s1["train/metrics/loss"][0] == [1, 7, 14, 21, 25, 28, 35, 42, 45]
    assert l1 == l8  # progress lines at the same steps with the same loss and accuracy


def test_a_non_finite_step_inside_a_loop_stops_there_naming_the_layer(tmp_path):
    found = []
    for n in (1, 8):
        trainer, _ = _run(tmp_path, f"n{n}", norm="none", learning_rate=1e4, steps_per_loop=n)
        with pytest.raises(NonFiniteError) as e:
            trainer.train_and_evaluate()
        found.append((e.value.step, e.value.layer, int(trainer.step.numpy())))
    assert found[0] == found[1]
    step, layer, applied = found[0]
    assert applied == step - 1  # nothing from the non-finite step on was applied
    assert layer in ("conv1", "dense1", "logits")


class _Crash(Exception):
    pass


def test_resuming_mid_run_with_another_loop_length_is_bitwise_the_same(tmp_path):
    whole, _ = _run(tmp_path, "whole", steps_per_loop=8)
    whole.train_and_evaluate()

    def crash_at_20(line):
        if line.startswith("step 20/45  loss"):
            raise _Crash()  # after step 20, before its checkpoint: resumes from ckpt-15

    config = Config(**{**EVENTS, "steps_per_loop": 8})
    first = Trainer(
        config, str(tmp_path / "split"), splits=tiny_splits(n_train=512), log=crash_at_20
    )
    with pytest.raises(_Crash):
        first.train_and_evaluate()
    first.close()
    second, lines = _run(tmp_path, "split", steps_per_loop=3)
    second.train_and_evaluate()
    assert any("resumed from" in line and "ckpt-15" in line for line in lines)
    assert all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(whole.model.variables, second.model.variables)
    )


def test_training_time_accumulates_over_segments_by_a_controlled_clock(tmp_path, monkeypatch):
    """A clock that moves only while steps run (1 s per step): a run trained in two
    segments reports the sum of both, 45 s for 45 steps, not the last segment's time."""
    from normlab.trainer import loop

    clock = {"now": 0.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["now"])

    def timed(trainer):
        step, many = trainer.train_step.__call__, trainer.train_step.loop

        class Timed:
            def __call__(self, *args, **kwargs):
                clock["now"] += 1.0
                return step(*args, **kwargs)

            def loop(self, batches, n):
                result = many(batches, n)
                clock["now"] += float(result["steps"])
                return result

        trainer.train_step = Timed()
        return trainer

    def crash_at_20(line):
        if line.startswith("step 20/45  loss"):
            raise _Crash()  # resumes from ckpt-15: steps 16-20 are trained again

    config = Config(**{**EVENTS, "steps_per_loop": 4})
    first = timed(
        Trainer(config, str(tmp_path / "r"), splits=tiny_splits(n_train=512), log=crash_at_20)
    )
    with pytest.raises(_Crash):
        first.train_and_evaluate()
    first.close()
    assert float(first.train_seconds.numpy()) == 15.0  # as saved with ckpt-15
    second, _ = _run(tmp_path, "r", steps_per_loop=4)
    metrics = timed(second).train_and_evaluate()
    assert metrics["train_seconds"] == 45.0
    assert metrics["train_steps_per_sec"] == 1.0
