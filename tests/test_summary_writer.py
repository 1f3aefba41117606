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
def test_a_short_training_prints_no_retracing_warning(tmp_path, idx_dir, arch):
    r = run_program("train.py", f"--model_dir={tmp_path / 'run'}", f"--data_dir={idx_dir}",
                    *SMALL, *arch)  # fmt: skip
    assert r.returncode == 0, r.stderr
    output = r.stdout + r.stderr
    assert "retracing" not in output, output
    assert "test accuracy" in output
