"""Input data: reading, splitting and tf.data pipelines."""

from data.datasets import DEFAULT_FASHION_MNIST_DIR
from data.datasets import DatasetInfo
from data.datasets import load
from data.datasets import Splits
from data.errors import DatasetError
from data.idx import read_idx
from data.pipeline import eval_dataset
from data.pipeline import steps_per_epoch
from data.pipeline import train_dataset

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
