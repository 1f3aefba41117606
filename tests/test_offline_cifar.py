"""CIFAR-10 without a network: a prepared TFDS copy loads, a missing one fails at once, clean.

The machine running the tests has no network, so the offline paths run for real; only the
case "the host answers but the download fails" is simulated.
"""

import json
import os
import socket
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from normlab import data
from normlab.data import download
from tests.fixtures import ROOT

_TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
_PER_FILE = 8  # records per fake CIFAR-10 file: 40 training and 8 test images
# The tests reading `prepared` run on one worker, which prepares it once.
pytestmark = pytest.mark.xdist_group("offline_cifar")


def _write_cifar_binary(directory, seed=0):
    """The CIFAR-10 binary distribution's layout with random images; returns the arrays.

    A record is 1 label byte and 3072 image bytes, channel-major (the format TFDS reads).
    """
    rng = np.random.default_rng(seed)
    batches = os.path.join(directory, "cifar-10-batches-bin")
    os.makedirs(batches)
    with open(os.path.join(batches, "batches.meta.txt"), "w") as fh:
        fh.write("\n".join(data.datasets._REGISTRY["cifar10"].class_names) + "\n")
    arrays = {}
    for split, files in (("train", _TRAIN_FILES), ("test", ["test_batch.bin"])):
        images, labels = [], []
        for name in files:
            x = rng.integers(0, 256, (_PER_FILE, 32, 32, 3), np.uint8)
            y = rng.integers(0, 10, _PER_FILE, np.uint8)
            records = np.concatenate([y[:, None], x.transpose(0, 3, 1, 2).reshape(-1, 3072)], 1)
            records.astype(np.uint8).tofile(os.path.join(batches, name))
            images.append(x)
            labels.append(y.astype(np.int64))
        arrays[split] = (np.concatenate(images), np.concatenate(labels))
    return arrays


def _prepare_cifar10(data_dir, source):
    """Prepares cifar10 in the TFDS data directory `data_dir` from the files in `source`,
    as TFDS does after downloading them."""
    builder = tfds.builder("cifar10", data_dir=data_dir)
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: source
    ):
        builder.download_and_prepare()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A HOME whose ~/tensorflow_datasets holds a prepared fake CIFAR-10, and its arrays."""
    home = tmp_path_factory.mktemp("home")
    source = str(tmp_path_factory.mktemp("cifar-source"))
    arrays = _write_cifar_binary(source)
    _prepare_cifar10(str(home / "tensorflow_datasets"), source)
    return home, arrays


def _sorted_rows(images, labels):
    """The examples as rows sorted lexicographically: TFDS stores them shuffled."""
    rows = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], 1)
    return rows[np.lexsort(rows.T[::-1])]


def _no_network(*args, **kwargs):
    raise AssertionError("a prepared copy must load without any network access")


def test_a_prepared_copy_loads_without_network(prepared, monkeypatch):
    home, arrays = prepared
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    splits = data.load("cifar10", str(home / "tensorflow_datasets"), validation_size=0)
    for split, (images, labels) in (
        ("train", (splits.train_x, splits.train_y)),
        ("test", (splits.test_x, splits.test_y)),
    ):
        np.testing.assert_array_equal(_sorted_rows(images, labels), _sorted_rows(*arrays[split]))


def _env(home, tmp_path):
    """A user's environment with HOME at `home`: TFDS's default data dir is HOME's."""
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
    env["HOME"] = str(home)
    # Keras and matplotlib write their config caches on every import; kept out of HOME so
    # that "HOME holds nothing new" is about the data set alone.
    env["KERAS_HOME"] = str(tmp_path / "keras")
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")
    return env


def _tree(directory):
    return sorted(
        os.path.relpath(os.path.join(r, n), directory)
        for r, ds, fs in os.walk(directory)
        for n in ds + fs
    )


@pytest.mark.slow
def test_train_reads_the_prepared_copy_in_tfds_default_dir(prepared, tmp_path):
    home, _ = prepared
    before = _tree(home)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--dataset=cifar10",
            f"--model_dir={tmp_path / 'run'}",
            "--validation_size=8",
            "--batch_size=8",
            "--widths=4",
            "--dense_units=8",
            "--train_steps=2",
            "--eval_batch_size=8",
        ],
        cwd=ROOT,
        env=_env(home, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "run" / "metrics.json") as fh:
        assert json.load(fh)["step"] == 2
    assert _tree(home) == before


@pytest.mark.slow
def test_train_without_network_fails_at_once_and_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--dataset=cifar10",
            f"--model_dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=_env(home, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0, message  # one paragraph
    assert message.startswith("train.py: error: CIFAR-10 is not prepared in")
    assert "www.cs.toronto.edu:443 does not answer" in message
    assert "once on a machine with a network" in message  # remedy 1
    assert "--data_dir=DIR naming a TFDS data directory" in message  # remedy 2
    # Not a speed assertion: TFDS's own retries take minutes, the check at most
    # download.REACHABILITY_TIMEOUT (10 s) after TensorFlow's start-up.
    assert elapsed < 60, elapsed
    assert _tree(home) == []
    assert not os.path.exists(tmp_path / "run")


def test_missing_data_dir_is_not_created(tmp_path):
    data_dir = tmp_path / "a" / "tfds"
    with pytest.raises(data.DatasetError, match="cannot be downloaded"):
        data.load("cifar10", str(data_dir), validation_size=5)
    assert _tree(tmp_path) == []


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    """The host answers but the download fails: what TFDS created is removed, the rest kept."""
    data_dir = tmp_path / "tfds"
    (data_dir / "mnist" / "3.0.1").mkdir(parents=True)
    (data_dir / "mnist" / "3.0.1" / "keep.txt").write_text("another data set")
    (data_dir / "downloads").mkdir()
    before = _tree(data_dir)
    created = []

    def dropped(self, url):
        created.extend(_tree(data_dir))  # what TFDS made before downloading
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(download, "unreachable_host", lambda urls: None)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", dropped)
    with pytest.raises(data.DatasetError, match="ConnectionError: connection reset by peer"):
        data.load("cifar10", str(data_dir), validation_size=5)
    assert set(created) > set(before)  # TFDS did create something (the test can fail)
    assert _tree(data_dir) == before


def test_unreachable_host_probes_each_host_and_the_proxy(monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    open_port, closed_port = listener.getsockname()[1], closed.getsockname()[1]
    closed.close()
    with listener:
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert download.unreachable_host([f"http://127.0.0.1:{open_port}/a"]) is None
        host, reason = download.unreachable_host(
            [f"http://127.0.0.1:{open_port}/a", f"https://127.0.0.1:{closed_port}/b"]
        )
        assert host == f"127.0.0.1:{closed_port}" and "refused" in reason
        host, reason = download.unreachable_host(["https://no-such-host.invalid/x.tar.gz"])
        assert host == "no-such-host.invalid:443" and "does not resolve" in reason
        # Through a proxy, the proxy is what must answer.
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{open_port}")
        assert download.unreachable_host(["https://no-such-host.invalid/x.tar.gz"]) is None
