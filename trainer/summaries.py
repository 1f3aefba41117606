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

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

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
# The HParams dashboard's metric columns, in this order.
HPARAMS_METRICS = (
    FINAL_TEST_ACCURACY,
    FINAL_VAL_ACCURACY,
    FINAL_TEST_LOSS,
    FINAL_VAL_LOSS,
    ACCURACY,
    LOSS,
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
    """

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._file_writer = None

    @property
    def _writer(self):
        if self._file_writer is None:
            self._file_writer = tf.summary.create_file_writer(self.logdir)
        return self._file_writer

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        """Each rank-0 value as a scalar, each tensor as a histogram, at `step`."""
        with self._writer.as_default(step=step):
            for tag, value in metrics.items():
                if tf.rank(value) == 0:
                    tf.summary.scalar(tag, value)
                else:
                    tf.summary.histogram(tag, value)

    def write_hparams(self, hparams: Mapping[str, object], trial_id: str) -> None:
        """The run's settings for TensorBoard's HParams dashboard (a run of its own)."""
        with self._writer.as_default():
            hparams_api.hparams_config(
                hparams=[hparams_api.HParam(name) for name in hparams],
                metrics=[hparams_api.Metric(tag) for tag in HPARAMS_METRICS],
            )
            hparams_api.hparams(dict(hparams), trial_id=trial_id)

    def flush(self) -> None:
        if self._file_writer is not None:
            self._file_writer.flush()

    def close(self) -> None:
        if self._file_writer is not None:
            self._file_writer.close()


class NullWriter:
    """Writes nothing: for processes that must not write the run directory (non-chief workers,
    evaluation of a finished run)."""

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        del step, metrics

    def write_hparams(self, hparams: Mapping[str, object], trial_id: str) -> None:
        del hparams, trial_id

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_writers(model_dir: str, writes: bool) -> dict[str, MetricWriter | NullWriter]:
    """{"train", "eval", "hparams"}: the run's writers (NullWriters when `writes` is False)."""
    if not writes:
        return {name: NullWriter() for name in ("train", "eval", "hparams")}
    return {
        "train": MetricWriter(os.path.join(model_dir, TRAIN_DIR)),
        "eval": MetricWriter(os.path.join(model_dir, EVAL_DIR)),
        "hparams": MetricWriter(model_dir),
    }
