"""Test setup: TensorFlow imported quietly, as every program does (normlab/quiet.py), before
any test module imports it; and the fixtures many test files share."""

import pytest

import normlab  # noqa: F401 - first: it imports TensorFlow quietly


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A directory holding a small synthetic Fashion-MNIST in IDX files (train.py --data_dir)."""
    from tests.fixtures import write_idx_dataset  # imports TensorFlow: not at collection

    directory = str(tmp_path_factory.mktemp("fmnist"))
    write_idx_dataset(directory)
    return directory
