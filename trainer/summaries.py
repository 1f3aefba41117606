"""TensorBoard writing: one small function per kind of record, consistent tags across runs.

Tags: train/loss, train/accuracy, train/learning_rate, train/steps_per_sec,
train/images_per_sec; activation/<layer>/{pre,post}_{mean,std}; grad_norm/<layer>,
grad_norm/global; param_norm/<layer>/<variable>; eval/{val,test}_{loss,accuracy}.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api


def write_scalars(writer, step: int, scalars: Mapping[str, float]) -> None:
    """Writes each value under its tag (nothing when writer is None: a read-only run)."""
    if writer is None:
        return
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.scalar(tag, value)


def write_histograms(writer, step: int, tensors: Mapping[str, tf.Tensor]) -> None:
    if writer is None:
        return
    with writer.as_default(step=step):
        for tag, value in tensors.items():
            tf.summary.histogram(tag, value)


def write_hparams(writer, hparams: Mapping[str, object], trial_id: str) -> None:
    """The run's hyper-parameters, for TensorBoard's HParams dashboard across runs."""
    if writer is None:
        return
    with writer.as_default():
        hparams_api.hparams(dict(hparams), trial_id=trial_id)
