"""Input data: reading, splitting and tf.data pipelines."""

from normlab.data.datasets import DEFAULT_FASHION_MNIST_DIR, DatasetInfo, Splits, load
from normlab.data.errors import DatasetError
from normlab.data.idx import read_idx
from normlab.data.pipeline import eval_dataset, steps_per_epoch, train_dataset

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "DatasetError",
    "DatasetInfo",
    "Splits",
    "eval_dataset",
    "load",
    "read_idx",
    "steps_per_epoch",
    "train_dataset",
]
