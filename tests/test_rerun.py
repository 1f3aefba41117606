"""Running a run again: what the same command does to each state a run directory can be in.

A finished run re-run longer trains exactly the added steps; a run stopped one step before
its end finishes with exactly its steps; an attempt stopped before its first checkpoint starts
again from step 0 with its leftovers moved aside; results without checkpoints (finished,
diverged) are refused; --start_over moves the whole earlier run aside. In-process (Trainer
driven directly); the real program killed, locked and interrupted in test_startup.py.
"""

import json
import os
import signal

import numpy as np
import pytest

from normlab.trainer import cli, summaries
from normlab.trainer.config import Config
from normlab.trainer.errors import Interrupted, NonFiniteError, UsageError
from normlab.trainer.signals import StopOnSignals
from normlab.trainer.trainer import Trainer, _describe_model
from tests.fixtures import tiny_splits

SMALL = dict(
    batch_size=32,
    eval_every=100,
    checkpoint_every=100,
    log_every=1,
    summary_every=100,
    histogram_every=100,
    eval_batch_size=100,
    widths=(8,),
    dense_units=16,
    lr_schedule="constant",  # N steps then 1 more = N + 1 steps at once, exactly
)


@pytest.fixture(scope="module")
def splits():
    return tiny_splits()


def _trainer(model_dir, splits, lines=None, **overrides) -> Trainer:
    config = Config(**{**SMALL, **overrides})
    log = lines.append if lines is not None else lambda _: None
    return Trainer(config, str(model_dir), splits=splits, log=log)


def _weights(trainer):
    return [v.numpy().copy() for v in trainer.model.variables]


def _interrupt_at(step: int, lines: list):
    """A log that records lines and, when step `step` is logged, delivers SIGINT to the
    training's handler (trainer/signals.py, as the kernel would on Ctrl-C, without a real
    signal): the loop saves that step and stops."""

    def log(line):
        lines.append(line)
        if line.startswith(f"step {step}/") and "val" not in line:
            handler = signal.getsignal(signal.SIGINT)
            assert isinstance(getattr(handler, "__self__", None), StopOnSignals), handler
            handler(signal.SIGINT, None)

    return log


def test_a_finished_run_rerun_one_step_longer_trains_exactly_one_step(tmp_path, splits):
    """Catches a run treated as finished one step before its end (`>= total_steps - 1` in
    train_and_evaluate): it would report N + 1 steps done without training the last."""
    first = _trainer(tmp_path / "r", splits, train_steps=4)
    assert first.train_and_evaluate()["step"] == 4
    longer = _trainer(tmp_path / "r", splits, train_steps=5)
    assert longer.current_step == 4
    results = longer.train_and_evaluate()
    assert longer.current_step == 5 and results["step"] == 5
    assert os.path.exists(tmp_path / "r" / "checkpoints" / "ckpt-5.index")
    straight = _trainer(tmp_path / "straight", splits, train_steps=5)
    straight.train()
    for a, b in zip(_weights(longer), _weights(straight)):  # exactly one more step, the 5th
        np.testing.assert_array_equal(a, b)


def test_a_run_stopped_one_step_before_its_end_finishes_with_exactly_its_steps(
    tmp_path, splits
):
    """Stopped (SIGINT, saved) at step total - 1, then run again: the last step is trained
    and evaluated. Catches train() treating step total - 1 as done (`start >= total - 1`)."""
    lines = []
    config = Config(**SMALL, train_steps=5)
    stopped = Trainer(config, str(tmp_path / "r"), splits=splits, log=_interrupt_at(4, lines))
    with pytest.raises(Interrupted, match="stopped at step 4 of 5") as caught:
        stopped.train_and_evaluate()
    assert str(caught.value).endswith("Run the same command again to resume.")
    stopped.close()
    assert not os.path.exists(tmp_path / "r" / "metrics.json")
    resumed = _trainer(tmp_path / "r", splits, train_steps=5)
    assert resumed.current_step == 4
    assert resumed.train_and_evaluate()["step"] == 5 and resumed.current_step == 5
    straight = _trainer(tmp_path / "straight", splits, train_steps=5)
    straight.train()
    for a, b in zip(_weights(resumed), _weights(straight)):
        np.testing.assert_array_equal(a, b)


def test_an_attempt_stopped_before_its_first_checkpoint_starts_again(tmp_path, splits):
    """What a run killed before its first checkpoint leaves (flags, HParams record, train/
    summaries) does not block the same command: it trains from step 0, says so in one line,
    and the earlier summaries are moved out of the new run's curves, kept."""
    model_dir = tmp_path / "r"
    first = _trainer(model_dir, splits, train_steps=3)
    first.train()  # writes train/ summaries; then "killed": checkpoints and metrics removed
    first.close()
    for name in os.listdir(model_dir / "checkpoints"):
        os.remove(model_dir / "checkpoints" / name)
    old_events = sorted(os.listdir(model_dir / "train"))
    lines = []
    again = _trainer(model_dir, splits, lines, train_steps=3)
    assert again.current_step == 0
    aside = model_dir / "earlier-attempts" / "1-before-first-checkpoint"
    said = [line for line in lines if line.startswith("starting again from step 0")]
    assert said == [
        "starting again from step 0: the earlier attempt stopped before its first checkpoint "
        f"(what it left, train/, eval/, moved to {aside})"
    ]
    assert sorted(os.listdir(aside / "train")) == old_events
    assert again.train_and_evaluate()["step"] == 3
    assert not set(os.listdir(model_dir / "train")) & set(old_events)


def test_results_without_checkpoints_are_refused_and_left_alone(tmp_path, splits):
    """A finished run whose checkpoints are gone, and a run that diverged before its first
    checkpoint: refused (exit 2), nothing moved, naming --start_over."""
    finished = tmp_path / "finished"
    _trainer(finished, splits, train_steps=2).train_and_evaluate()
    for name in os.listdir(finished / "checkpoints"):
        os.remove(finished / "checkpoints" / name)
    with pytest.raises(UsageError, match=r"holds a finished run \(test accuracy 0\.\d{4}, test "):
        _trainer(finished, splits, train_steps=2)
    diverged = tmp_path / "diverged"
    bad = dict(train_steps=3, norm="none", learning_rate=1e30)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step \d") as caught:
        _trainer(diverged, splits, **bad).train()
    step = caught.value.step
    for model_dir, what, flags in (
        (finished, "finished", dict(train_steps=2)),
        (diverged, f"diverged at step {step}", bad),
    ):
        before = sorted(os.listdir(model_dir))
        with pytest.raises(UsageError, match=what) as caught:
            _trainer(model_dir, splits, **flags)
        assert "--start_over" in str(caught.value) and "Nothing was changed" in str(caught.value)
        assert sorted(os.listdir(model_dir)) == before and "earlier-attempts" not in before


def test_start_over_moves_the_earlier_run_aside_and_its_hint_drops_the_flag(tmp_path, splits):
    """--start_over on a finished run (checkpoints and all) trains from step 0, the earlier
    run kept whole in earlier-attempts/N-start-over/; interrupted, it says to resume without
    --start_over, and that command resumes."""
    model_dir = tmp_path / "r"
    _trainer(model_dir, splits, train_steps=3).train_and_evaluate()
    metrics = (model_dir / "metrics.json").read_text()
    lines = []
    config = Config(**SMALL, train_steps=3, learning_rate=0.01)  # other settings: accepted
    over = Trainer(
        config, str(model_dir), splits=splits, log=_interrupt_at(2, lines), start_over=True
    )
    aside = model_dir / "earlier-attempts" / "1-start-over"
    assert f"starting over from step 0: the earlier run moved to {aside}" in lines
    assert over.current_step == 0
    assert (aside / "metrics.json").read_text() == metrics
    assert sorted(n for n in os.listdir(aside / "checkpoints") if n.endswith(".index")) == [
        "ckpt-3.index"
    ]
    assert (aside / "flags.txt").is_file() and (aside / "train").is_dir()
    assert any(n.startswith("events.out.tfevents.") for n in os.listdir(aside))  # HParams
    with pytest.raises(Interrupted) as caught:
        over.train_and_evaluate()
    assert str(caught.value).endswith("Run the same command without --start_over to resume.")
    over.close()
    resumed = _trainer(model_dir, splits, train_steps=3, learning_rate=0.01)
    assert resumed.current_step == 2 and resumed.train_and_evaluate()["step"] == 3
    assert (aside / "metrics.json").read_text() == metrics


def test_already_trained_says_the_results(tmp_path, splits):
    _trainer(tmp_path / "r", splits, train_steps=2).train_and_evaluate()
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    lines = []
    _trainer(tmp_path / "r", splits, lines, train_steps=2).train_and_evaluate()
    assert (
        f"already trained: step 2 of 2, test accuracy {metrics['test_accuracy']:.4f}, test loss "
        f"{metrics['test_loss']:.4f} ({tmp_path / 'r' / 'metrics.json'})"
    ) in lines


def test_the_training_line_names_the_model_and_the_norm_as_it_is():
    assert _describe_model(Config(norm="none")) == "the CNN without normalization"
    assert _describe_model(Config(norm="none", norm_impl="builtin")) == (
        "the CNN without normalization"
    )
    assert _describe_model(Config(norm="batch")) == "the CNN with batch norm (normlab)"
    assert _describe_model(Config(norm="layer", norm_impl="builtin", arch="lstm")) == (
        "the LSTM with layer norm (keras LayerNormalization)"
    )


def test_a_divergence_says_whether_the_loss_or_the_gradient_was_not_finite(tmp_path, splits):
    """A finite (huge) loss with a non-finite gradient is not called a non-finite loss."""
    trainer = _trainer(tmp_path / "r", splits, train_steps=2, norm="none")
    real_step = trainer.train_step
    layer = next(name for name, _ in trainer.model.named_layers())

    def finite_loss_infinite_gradient(images, labels, level):
        metrics = dict(real_step(images, labels, level))
        metrics[summaries.LOSS] = np.float32(2.179e34)
        metrics[summaries.GRAD_NORM_GLOBAL] = np.float32(np.inf)
        metrics[summaries.grad_norm(layer)] = np.float32(np.inf)
        return metrics

    trainer.train_step = finite_loss_infinite_gradient
    with pytest.raises(NonFiniteError) as caught:
        trainer._stop_on_non_finite(1)
    message = str(caught.value)
    assert message.startswith(
        "non-finite gradient at step 1 (gradient norm inf; the loss, 2.179e+34, is finite); "
        f"first non-finite layer: {layer}."
    ), message


def test_an_interruption_is_not_labelled_an_error(capsys):
    def main():
        raise Interrupted("SIGINT received: stopped at step 3 of 9 after saving x.", 2)

    assert cli.run_main(main, "train.py") == 130
    assert capsys.readouterr().err == (
        "train.py: interrupted: SIGINT received: stopped at step 3 of 9 after saving x.\n"
    )
