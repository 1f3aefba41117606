"""TensorBoard writes without retracing: MetricWriter compiles its scalar writer once for any set
of tags, and a short real training prints no TensorFlow retracing warning (the end of a run
writes several new sets of tags; one tf.function per set warned about excessive retracing)."""

import numpy as np
import pytest

from tests.fixtures import run_program

# The short run (its other flags at their defaults), on a small batch.
SMALL = ("--train_steps=40", "--summary_every=10", "--batch_size=16", "--validation_size=64")


def test_any_set_of_scalar_tags_is_written_by_one_trace(tmp_path):
    import tensorflow as tf

    from normlab.trainer.summaries import MetricWriter, read_scalars

    writer = MetricWriter(str(tmp_path))
    for step in range(1, 9):  # eight different sets of tags, a histogram in two of them
        metrics = {f"set{step}/a": step, f"set{step}/b": np.float64(step / 2), "shared": 1.0}
        if step in (1, 8):
            metrics["hist"] = tf.range(10.0)
        writer.write(step, metrics)
    writer.close()
    assert writer._scalars.experimental_get_tracing_count() == 1
    assert [h.experimental_get_tracing_count() for h in writer._histograms.values()] == [1]
    scalars = read_scalars(str(tmp_path))
    assert scalars["set3/b"][0].tolist() == [3] and scalars["set3/b"][1].tolist() == [1.5]
    assert scalars["shared"][0].tolist() == list(range(1, 9))
    assert "hist" not in scalars  # a histogram, not a scalar


@pytest.mark.parametrize(
    "arch", [("--widths=8", "--dense_units=16"), ("--arch=lstm", "--lstm_units=8")]
)
@pytest.mark.slow
def test_a_short_training_prints_no_retracing_warning(tmp_path, idx_dir, arch):
    r = run_program("train.py", f"--model_dir={tmp_path / 'run'}", f"--data_dir={idx_dir}",
                    *SMALL, *arch)  # fmt: skip
    assert r.returncode == 0, r.stderr
    output = r.stdout + r.stderr
    assert "retracing" not in output, output
    assert "test accuracy" in output


def test_the_hparams_table_shows_the_settings_that_tell_runs_apart(tmp_path):
    """TensorBoard's HParams table ticks five settings: the first five after its server sorts
    by (not differs, name) and its page moves those flagged `differs` first. Unflagged, these
    were arch, augment, batch_size, bn_momentum and dataset (alphabetical), which most runs
    share."""
    import dataclasses

    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import backend_context, metadata

    from normlab.trainer.config import Config
    from normlab.trainer.summaries import HPARAMS_SHOWN, MetricWriter

    settings = [f.name for f in dataclasses.fields(Config) if not f.metadata["resumable"]]
    assert set(HPARAMS_SHOWN) - {"total_steps"} <= set(settings)
    writer = MetricWriter(str(tmp_path))
    writer.write_hparams({name: 1 for name in settings + ["total_steps", "epochs"]})
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    backend_context._sort_and_reduce_to_hparams_limit(experiment)  # the server's order
    infos = sorted(experiment.hparam_infos, key=lambda info: not info.differs)  # the page's
    shown = [info.name for info in infos[:5]]
    assert shown == ["arch", "learning_rate", "norm", "seed", "total_steps"]
    assert [info.name for info in infos if info.differs] == shown
    assert [m.name.tag for m in experiment.metric_infos][0] == "final/test_accuracy"
