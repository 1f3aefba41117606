"""TensorBoard: the tag names, and the writers that turn {tag: value} dicts into summaries.

Every tag normlab writes is named here; the training step keys its results by these names,
and report/ reads the event files back with them. A run directory holds two TensorBoard runs,
`train/` and `eval/`; the loss and accuracy of the training batches (train/) and of the
validation set (eval/) share their tags, so TensorBoard draws them on one chart.

Scalars (rank-0 values) and histograms (tensors) are told apart by rank, so one dict can hold
both: `MetricWriter.write(step, metrics)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

TRAIN_DIR, EVAL_DIR = "train", "eval"

# In train/: the training batches (a step's batch; the logged window's mean in the log line).
# In eval/: the validation set, at every validation.
LOSS = "metrics/loss"
ACCURACY = "metrics/accuracy"
# train/ only.
LEARNING_RATE = "train/learning_rate"
STEPS_PER_SEC = "train/steps_per_sec"
IMAGES_PER_SEC = "train/images_per_sec"
GRAD_NORM_GLOBAL = "grad_norm/global"
# train/, float16 mixed precision only: the loss scale, and 1 for a step its overflow skipped.
LOSS_SCALE = "train/loss_scale"
LOSS_SCALE_OVERFLOW = "train/loss_scale_overflow"
# eval/ only, once at the end: the final model on the validation and test sets.
FINAL_VAL_LOSS = "final/val_loss"
FINAL_VAL_ACCURACY = "final/val_accuracy"
FINAL_TEST_LOSS = "final/test_loss"
FINAL_TEST_ACCURACY = "final/test_accuracy"
# The HParams dashboard's table shows five settings by default (TensorBoard's
# tf-hparams-query-pane: the first five after a stable sort that puts those flagged `differs`
# first, in the server's order, which is by name among equals). These five are flagged, so the
# settings that tell a report's runs apart are shown; the others are one click away.
HPARAMS_SHOWN = ("arch", "learning_rate", "norm", "seed", "total_steps")
# The HParams dashboard's metric columns, in this order, with the run (below the run directory)
# that holds each: the final test and validation results lead, the training batches' last.
HPARAMS_METRICS = (
    (FINAL_TEST_ACCURACY, EVAL_DIR),
    (FINAL_VAL_ACCURACY, EVAL_DIR),
    (FINAL_TEST_LOSS, EVAL_DIR),
    (FINAL_VAL_LOSS, EVAL_DIR),
    (ACCURACY, TRAIN_DIR),
    (LOSS, TRAIN_DIR),
)


def grad_norm(layer: str) -> str:
    """L2 norm of the gradient of one layer's trainable variables."""
    return f"grad_norm/{layer}"


def param_norm(layer: str, variable: str) -> str:
    """L2 norm of one variable."""
    return f"param_norm/{layer}/{variable}"


def activation(layer: str, when: str, stat: str) -> str:
    """Mean or std (`stat`) over a hidden layer's whole output, before ("pre") or after ("post")
    its norm."""
    return f"activation/{layer}/{when}_{stat}"


def weights_histogram(layer: str, variable: str) -> str:
    return f"weights/{layer}/{variable}"


def gradients_histogram(layer: str, variable: str) -> str:
    return f"gradients/{layer}/{variable}"


def activations_histogram(layer: str, when: str) -> str:
    return f"activations/{layer}/{when}"


class MetricWriter:
    """Writes {tag: value} dicts into one TensorBoard run directory (CLU's metric writer).

    The event file is created on the first write, so opening a run that has nothing to write
    (a finished run started again) leaves its directory as it was.

    Compiled writes, traced once each: every scalar of every dict goes through one tf.function
    that takes the tags and values as two vectors (any set of tags, no retracing), and the
    histograms through one tf.function per set of histogram tags (a step with histograms
    collects the same set every time). Compiled, because a histogram's bucketing written
    eagerly costs tens of ms per tensor; not one tf.function per set of tags, because each new
    set (the end of a run writes several) would be a new trace, which TensorFlow warns about.
    """

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._file_writer = None
        self._scalars = None  # the tf.function writing (tags, values) vectors
        self._histograms = {}  # (tag, shape, dtype) of every tensor -> the tf.function for them

    @property
    def _writer(self):
        if self._file_writer is None:
            self._file_writer = tf.summary.create_file_writer(self.logdir)
        return self._file_writer

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        """Each rank-0 value as a scalar (float32, as tf.summary.scalar stores it), each tensor
        as a histogram, at `step`."""
        values = {tag: tf.convert_to_tensor(v) for tag, v in metrics.items()}
        scalars = {tag: v for tag, v in values.items() if v.shape.rank == 0}
        tensors = {tag: v for tag, v in values.items() if v.shape.rank != 0}
        step = tf.constant(step, tf.int64)
        if scalars:
            if self._scalars is None:
                self._scalars = _scalar_writer(self._writer)
            self._scalars(
                step,
                tf.constant(list(scalars), tf.string),
                tf.stack([tf.cast(v, tf.float32) for v in scalars.values()]),
            )
        if tensors:
            key = tuple((tag, tuple(v.shape), v.dtype) for tag, v in tensors.items())
            if key not in self._histograms:
                self._histograms[key] = _histogram_writer(self._writer)
            self._histograms[key](step, tensors)

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        """The run's settings for TensorBoard's HParams dashboard (a run of its own).

        The trial is left unnamed (trial_id ""): TensorBoard then names it by the run's path
        below the directory it was pointed at, so every run directory is its own trial - two
        runs with the same last path component, or a copy of a run, never merge into one row.
        """
        with self._writer.as_default():
            config = hparams_config_pb(hparams)
            tf.summary.experimental.write_raw_pb(config.SerializeToString(), step=0)
            hparams_api.hparams(dict(hparams), trial_id="")

    def flush(self) -> None:
        if self._file_writer is not None:
            self._file_writer.flush()

    def close(self) -> None:
        if self._file_writer is not None:
            self._file_writer.close()


def hparams_config_pb(names) -> summary_pb2.Summary:
    """The HParams dashboard's configuration (hparams_api.hparams_config's summary): the
    settings `names`, those of HPARAMS_SHOWN flagged `differs` so the table shows them, and the
    metrics of HPARAMS_METRICS."""
    summary = hparams_api.hparams_config_pb(
        hparams=[hparams_api.HParam(name) for name in names],
        metrics=[hparams_api.Metric(tag, group=group) for tag, group in HPARAMS_METRICS],
    )
    (value,) = summary.value
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in HPARAMS_SHOWN
    value.metadata.plugin_data.content = data.SerializeToString()
    return summary


def _scalar_writer(writer):
    """A tf.function writing scalars[i] under tags[i] at step, for any number of them: what
    tf.summary.scalar writes (its metadata, float32), with the tag a tensor."""
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    meta = scalar_metadata.create_summary_metadata(display_name=None, description=None)

    def write_scalars(step, tags, scalars):
        with writer.as_default(step=step):

            def body(i):
                tf.summary.write(tags[i], scalars[i], step=step, metadata=meta)
                return (i + 1,)

            tf.while_loop(lambda i: i < tf.size(tags), body, (tf.constant(0),))

    return tf.function(
        write_scalars,
        autograph=False,
        input_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([None], tf.float32),
        ),
    )


def _histogram_writer(writer):
    """A tf.function writing a dict of tensors as histograms (traced for one set of tags)."""

    def write_histograms(step, tensors):
        with writer.as_default(step=step):
            for tag, value in tensors.items():
                tf.summary.histogram(tag, value)

    return tf.function(write_histograms, autograph=False)


class NullWriter:
    """Writes nothing: for processes that must not write the run directory (non-chief workers,
    evaluation of a finished run)."""

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        del step, metrics

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_scalars(logdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} of every scalar written into logdir (one value per step, the
    last): how report/ and the tests read a run's summaries back, by the tags above. {} for a
    directory that does not exist (a run that diverged before its first validation has no
    eval/)."""
    if not os.path.isdir(logdir):
        return {}
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("tensors", []):
        by_step = {}
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.size == 1:
                by_step[event.step] = float(value.reshape(()))
        if by_step:
            steps = np.array(sorted(by_step))
            out[tag] = (steps, np.array([by_step[s] for s in steps]))
    return out


def open_writers(model_dir: str, writes: bool) -> dict[str, MetricWriter | NullWriter]:
    """{"train", "eval", "hparams"}: the run's writers (NullWriters when `writes` is False)."""
    if not writes:
        return {name: NullWriter() for name in ("train", "eval", "hparams")}
    return {
        "train": MetricWriter(os.path.join(model_dir, TRAIN_DIR)),
        "eval": MetricWriter(os.path.join(model_dir, EVAL_DIR)),
        "hparams": MetricWriter(model_dir),
    }


def tags_markdown() -> str:
    """Every tag normlab writes, as the README's Markdown table (`python -m
    normlab.trainer.summaries` prints it; tests/test_docs.py checks the README holds it)."""
    per_layer = "<layer>"
    rows = [
        (TRAIN_DIR, LOSS, "the training batch's loss, at every --summary_every step"),
        (TRAIN_DIR, ACCURACY, "the training batch's accuracy, at the same steps"),
        (TRAIN_DIR, LEARNING_RATE, "the learning rate of that step"),
        (TRAIN_DIR, GRAD_NORM_GLOBAL, "L2 norm of the whole gradient"),
        (TRAIN_DIR, grad_norm(per_layer), "L2 norm of one layer's gradient"),
        (TRAIN_DIR, param_norm(per_layer, "<variable>"), "L2 norm of one variable"),
        (TRAIN_DIR, activation(per_layer, "{pre,post}", "{mean,std}"),
         "mean and std of a hidden layer's output before / after its norm"),
        (TRAIN_DIR, STEPS_PER_SEC, "throughput of the last logging window"),
        (TRAIN_DIR, IMAGES_PER_SEC, "the same in images"),
        (TRAIN_DIR, weights_histogram(per_layer, "<variable>"),
         "histogram, at the first and last step and every --histogram_every"),
        (TRAIN_DIR, gradients_histogram(per_layer, "<variable>"), "histogram, the same steps"),
        (TRAIN_DIR, activations_histogram(per_layer, "{pre,post}"), "histogram, the same steps"),
        (TRAIN_DIR, LOSS_SCALE, "mixed_float16 only: the dynamic loss scale"),
        (TRAIN_DIR, LOSS_SCALE_OVERFLOW, "mixed_float16 only: 1 for a step an overflow skipped"),
        (EVAL_DIR, LOSS, "the validation loss, at every --eval_every step and the last"),
        (EVAL_DIR, ACCURACY, "the validation accuracy, at the same steps"),
        (EVAL_DIR, FINAL_VAL_LOSS, "the final model's validation loss (once, at the end)"),
        (EVAL_DIR, FINAL_VAL_ACCURACY, "the final model's validation accuracy"),
        (EVAL_DIR, FINAL_TEST_LOSS, "the final model's test loss"),
        (EVAL_DIR, FINAL_TEST_ACCURACY, "the final model's test accuracy"),
    ]  # fmt: skip
    lines = ["| run | tag | what |", "|---|---|---|"]
    lines += [f"| `{run}/` | `{tag}` | {what} |" for run, tag, what in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        prog="python -m normlab.trainer.summaries",
        description="Prints the README's table of TensorBoard tags.",
    ).parse_args()
    print(tags_markdown())
