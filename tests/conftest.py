"""Test setup: TensorFlow imported quietly, as every program does (normlab/quiet.py), before
any test module imports it; and the fixtures many test files share.

Fixtures that cost a TensorFlow process or a training are session-scoped: made once per test
run (once per xdist worker), read by every test that needs them; a test that changes one works
on a copy (`copy_of`). The tests that use one are marked `xdist_group` with the fixture's name,
so `--dist loadgroup` (pytest.ini) runs them on one worker and the fixture is made once.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

import normlab  # noqa: F401 - first: it imports TensorFlow quietly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A directory holding a small synthetic Fashion-MNIST in IDX files (train.py --data_dir).
    Read-only: a test that changes files makes its own (tests.fixtures.write_idx_dataset)."""
    from tests.fixtures import write_idx_dataset  # imports TensorFlow: not at collection

    directory = str(tmp_path_factory.mktemp("fmnist"))
    write_idx_dataset(directory)
    return directory


@pytest.fixture(scope="session")
def mirrored(tmp_path_factory):
    """The measurements of tests/distributed_check.py: synchronized batch norm, model.fit with
    normlab's Keras batch norm and the LSTM's TrainStep, each on 2 MirroredStrategy replicas
    (logical CPUs) against one device, made in one subprocess (the logical devices must be
    configured before TensorFlow's runtime starts, which pytest's process has done)."""
    path = tmp_path_factory.mktemp("mirrored") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.distributed_check", "--json", str(path)],
        check=False,  # the assertion below shows the child's stderr instead
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(path) as fh:
        return json.load(fh)


def copy_of(run_dir, tmp_path) -> str:
    """A copy of a shared run directory under the test's tmp_path, for a test that changes it."""
    target = os.path.join(str(tmp_path), os.path.basename(str(run_dir)))
    shutil.copytree(str(run_dir), target)
    return target
