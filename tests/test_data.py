"""Tests of the data package: IDX reading, loading, tf.data pipelines."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from normlab import data
from normlab.data import datasets

_REINSTALL_HINT = "apt-get install --reinstall dataset-fashion-mnist"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _idx_bytes(array, magic=None):
    """Encodes a uint8 array as IDX; `magic` overrides the first 4 bytes."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write(path, content):
    """Writes bytes to `path`, gzipped if it ends in .gz; returns str(path)."""
    if str(path).endswith(".gz"):
        content = gzip.compress(content)
    with open(path, "wb") as f:
        f.write(content)
    return str(path)


def _fake_fashion_mnist(
    directory, num_train=50, num_test=20, gz=True, train_labels=None, train_image_size=(28, 28)
):
    """Writes a small Fashion-MNIST look-alike; returns (train_x, train_y).

    Every training image carries its index in pixels [0, 0] and [0, 1], so
    examples can be identified after the holdout.
    """
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (num_train,) + train_image_size, np.uint8)
    train_x[:, 0, 0] = np.arange(num_train) % 256
    train_x[:, 0, 1] = np.arange(num_train) // 256
    if train_labels is None:
        train_labels = np.arange(num_train) % 10
    test_x = rng.integers(0, 256, (num_test, 28, 28), np.uint8)
    test_y = np.arange(num_test) % 10
    suffix = ".gz" if gz else ""
    for name, array in (
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", train_labels),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", test_y),
    ):
        _write(directory / (name + suffix), _idx_bytes(array))
    return train_x, np.asarray(train_labels)


def _example_ids(images):
    """Recovers the indices written by _fake_fashion_mnist."""
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 1, 0].astype(np.int64)


def _np_standardize(images, mean, std):
    return (images.astype(np.float32) / np.float32(255) - mean) / std


def _take(ds, count):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]


# ---------------------------------------------------------------------------
# read_idx
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 3, 4)])
def test_read_idx_round_trips(tmp_path, suffix, shape):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, shape, np.uint8)
    path = _write(tmp_path / ("f" + suffix), _idx_bytes(array))
    got = data.read_idx(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, array)
    got[0] = 1  # Must be a normal, writable array.


def _assert_idx_error(path, *fragments):
    with pytest.raises(data.DatasetError) as info:
        data.read_idx(path)
    message = str(info.value)
    assert path in message
    assert _REINSTALL_HINT in message and "--data_dir" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_bad_magic(tmp_path, suffix):
    path = _write(tmp_path / ("f" + suffix), _idx_bytes(np.zeros(3), magic=0x12345678))
    _assert_idx_error(
        path, "bad magic number 0x12345678", "0x00000803 (images)", "0x00000801 (labels)"
    )


def test_read_idx_rejects_other_dtype(tmp_path):
    path = _write(tmp_path / "f", _idx_bytes(np.zeros(3), magic=0x00000D01))
    _assert_idx_error(path, "unsupported data type code 0x0d", "float32")


def test_read_idx_rejects_zero_dims(tmp_path):
    path = _write(tmp_path / "f", b"\x00\x00\x08\x00")
    _assert_idx_error(path, "0 dimensions")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_truncated_payload(tmp_path, suffix):
    content = _idx_bytes(np.ones((4, 5, 3)))
    path = _write(tmp_path / ("f" + suffix), content[:-10])
    _assert_idx_error(path, "truncated: expected 60 bytes", "found 50")


def test_read_idx_rejects_truncated_header(tmp_path):
    content = _idx_bytes(np.ones((4, 5, 3)))
    path = _write(tmp_path / "f", content[:9])
    _assert_idx_error(path, "truncated header", "found 9")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_trailing_bytes(tmp_path, suffix):
    content = _idx_bytes(np.ones((4, 5)))
    path = _write(tmp_path / ("f" + suffix), content + b"abc")
    _assert_idx_error(path, "3 trailing bytes")


def test_read_idx_rejects_gzip_header_then_garbage(tmp_path):
    path = str(tmp_path / "f.gz")
    good = gzip.compress(_idx_bytes(np.arange(100)))
    with open(path, "wb") as f:
        f.write(good[:10] + b"this is not deflate data" * 4)
    _assert_idx_error(path, "not a valid gzip file")


def test_read_idx_rejects_cut_gzip_stream(tmp_path):
    path = str(tmp_path / "f.gz")
    good = gzip.compress(_idx_bytes(np.arange(100)))
    with open(path, "wb") as f:
        f.write(good[: len(good) // 2])
    _assert_idx_error(path, "not a valid gzip file")


def test_read_idx_rejects_non_gzip_named_gz(tmp_path):
    path = str(tmp_path / "f.gz")
    with open(path, "wb") as f:
        f.write(_idx_bytes(np.arange(100)))  # Raw IDX, not compressed.
    _assert_idx_error(path, "not a valid gzip file")


@pytest.mark.parametrize("name", ["f", "f.gz"])
def test_read_idx_rejects_empty_file(tmp_path, name):
    path = str(tmp_path / name)
    open(path, "wb").close()
    _assert_idx_error(path, "file is empty")


def test_read_idx_rejects_missing_file(tmp_path):
    _assert_idx_error(str(tmp_path / "absent.gz"), "file not found")


def test_dataset_error_is_value_error():
    assert issubclass(data.DatasetError, ValueError)


# ---------------------------------------------------------------------------
# load: Fashion-MNIST from a directory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_dir(tmp_path, gz):
    train_x, train_y = _fake_fashion_mnist(tmp_path, gz=gz)
    splits = data.load("fashion_mnist", str(tmp_path), validation_size=10)

    assert splits.train_x.shape == (40, 28, 28, 1)
    assert splits.val_x.shape == (10, 28, 28, 1)
    assert splits.test_x.shape == (20, 28, 28, 1)
    for images in (splits.train_x, splits.val_x, splits.test_x):
        assert images.dtype == np.uint8
    for labels in (splits.train_y, splits.val_y, splits.test_y):
        assert labels.dtype == np.int64 and labels.ndim == 1
    assert splits.info.name == "fashion_mnist"
    assert splits.info.image_shape == (28, 28, 1)
    assert splits.info.num_classes == 10
    assert splits.info.class_names[0] == "T-shirt/top"
    assert splits.info.class_names[9] == "Ankle boot"
    assert splits.info.source == str(tmp_path)

    # The holdout: disjoint, together the original training set, images and
    # labels still paired.
    train_ids = _example_ids(splits.train_x)
    val_ids = _example_ids(splits.val_x)
    assert not set(train_ids) & set(val_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, val_ids])), np.arange(50))
    np.testing.assert_array_equal(splits.train_x[..., 0], train_x[train_ids])
    np.testing.assert_array_equal(splits.train_y, train_y[train_ids])
    np.testing.assert_array_equal(splits.val_y, train_y[val_ids])
    # Not simply the first or last examples.
    assert not np.array_equal(np.sort(val_ids), np.arange(10))
    assert not np.array_equal(np.sort(val_ids), np.arange(40, 50))

    # Pixel statistics of the training part only, per channel, of x / 255.
    expected = splits.train_x.astype(np.float64) / 255
    assert splits.pixel_mean.dtype == np.float32
    assert splits.pixel_mean.shape == splits.pixel_std.shape == (1,)
    np.testing.assert_allclose(splits.pixel_mean, [expected.mean()], rtol=1e-6)
    np.testing.assert_allclose(splits.pixel_std, [expected.std()], rtol=1e-6)


def test_load_holdout_is_fixed(tmp_path):
    _fake_fashion_mnist(tmp_path)
    first = data.load("fashion_mnist", str(tmp_path), validation_size=7)
    second = data.load("fashion_mnist", str(tmp_path), validation_size=7)
    np.testing.assert_array_equal(first.val_x, second.val_x)
    np.testing.assert_array_equal(first.train_y, second.train_y)


def test_load_validation_size_zero(tmp_path):
    _fake_fashion_mnist(tmp_path)
    splits = data.load("fashion_mnist", str(tmp_path), validation_size=0)
    assert splits.train_x.shape == (50, 28, 28, 1)
    assert splits.val_x.shape == (0, 28, 28, 1)
    assert splits.val_y.shape == (0,)


@pytest.mark.parametrize("size", [-1, 50, 51])
def test_load_rejects_bad_validation_size(tmp_path, size):
    _fake_fashion_mnist(tmp_path)
    with pytest.raises(data.DatasetError, match=r"validation_size=.*\[0, 50\)"):
        data.load("fashion_mnist", str(tmp_path), validation_size=size)


def test_load_names_missing_file(tmp_path):
    _fake_fashion_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(data.DatasetError) as info:
        data.load("fashion_mnist", str(tmp_path), validation_size=5)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert str(tmp_path) in message


def test_load_rejects_mismatched_counts(tmp_path):
    _fake_fashion_mnist(tmp_path, train_labels=np.arange(49) % 10)
    with pytest.raises(data.DatasetError, match="50 images but 49 labels"):
        data.load("fashion_mnist", str(tmp_path), validation_size=5)


def test_load_rejects_label_out_of_range(tmp_path):
    labels = np.arange(50) % 10
    labels[17] = 10
    _fake_fashion_mnist(tmp_path, train_labels=labels)
    with pytest.raises(data.DatasetError, match=r"labels must be in \[0, 10\)"):
        data.load("fashion_mnist", str(tmp_path), validation_size=5)


def test_load_rejects_wrong_image_size(tmp_path):
    _fake_fashion_mnist(tmp_path, train_image_size=(28, 27))
    with pytest.raises(data.DatasetError, match=r"expected \(28, 28, 1\)"):
        data.load("fashion_mnist", str(tmp_path), validation_size=5)


def test_load_rejects_swapped_files(tmp_path):
    _fake_fashion_mnist(tmp_path)
    os.rename(tmp_path / "train-labels-idx1-ubyte.gz", tmp_path / "tmp.gz")
    os.rename(tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz")
    os.rename(tmp_path / "tmp.gz", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(data.DatasetError, match="right file"):
        data.load("fashion_mnist", str(tmp_path), validation_size=5)


def test_load_rejects_unknown_name():
    with pytest.raises(data.DatasetError, match="cifar10, fashion_mnist"):
        data.load("mnist", None, validation_size=5)


def test_load_uses_default_dir_without_tfds(tmp_path, monkeypatch):
    _fake_fashion_mnist(tmp_path)
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path))

    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS must not be used when the local files exist")

    monkeypatch.setattr(tfds, "load", no_tfds)
    splits = data.load("fashion_mnist", None, validation_size=5)
    assert splits.info.source == str(tmp_path)
    assert splits.train_x.shape == (45, 28, 28, 1)


@pytest.mark.skipif(
    not os.path.isdir(data.DEFAULT_FASHION_MNIST_DIR),
    reason=(
        f"{data.DEFAULT_FASHION_MNIST_DIR} absent: install it with"
        " `apt-get install dataset-fashion-mnist`"
    ),
)
def test_load_real_fashion_mnist():
    splits = data.load("fashion_mnist", None, validation_size=5000)
    assert splits.info.source == data.DEFAULT_FASHION_MNIST_DIR
    assert splits.train_x.shape == (55000, 28, 28, 1)
    assert splits.val_x.shape == (5000, 28, 28, 1)
    assert splits.test_x.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(splits.test_y), [1000] * 10)
    all_train = np.concatenate([splits.train_y, splits.val_y])
    np.testing.assert_array_equal(np.bincount(all_train), [6000] * 10)
    # The well-known statistics of Fashion-MNIST's training images.
    np.testing.assert_allclose(splits.pixel_mean, [0.2860], atol=2e-3)
    np.testing.assert_allclose(splits.pixel_std, [0.3530], atol=2e-3)


# ---------------------------------------------------------------------------
# load: through TFDS
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_load_through_mocked_tfds(tmp_path, monkeypatch, name, shape):
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with tfds.testing.mock_data(num_examples=12):
        splits = data.load(name, None, validation_size=3)
    assert splits.train_x.shape == (9,) + shape
    assert splits.val_x.shape == (3,) + shape
    assert splits.test_x.shape == (12,) + shape
    assert splits.train_x.dtype == np.uint8
    assert splits.train_y.dtype == np.int64
    assert splits.info.source == "tfds"
    assert splits.info.image_shape == shape
    assert splits.pixel_mean.shape == (shape[-1],)


def _offline_tfds_load(*args, **kwargs):
    raise ConnectionError("Failed to reach storage.googleapis.com\nmore lines")


def test_fashion_mnist_tfds_failure_explains_install(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(tfds, "load", _offline_tfds_load)
    with pytest.raises(data.DatasetError) as info:
        data.load("fashion_mnist", None, validation_size=5)
    message = str(info.value)
    assert message.startswith("Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data_dir=DIR" in message
    assert (
        "downloading through TFDS failed: ConnectionError: Failed to reach storage.googleapis.com"
    ) in message
    assert "more lines" not in message


def test_cifar10_tfds_failure_explains(monkeypatch):
    monkeypatch.setattr(tfds, "load", _offline_tfds_load)
    with pytest.raises(data.DatasetError) as info:
        data.load("cifar10", "/nonexistent/tfds", validation_size=5)
    message = str(info.value)
    assert "CIFAR-10" in message and "internet" in message
    assert "TFDS data directory" in message
    assert "ConnectionError" in message


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------

_MEAN = np.array([0.25, 0.5], np.float32)
_STD = np.array([0.2, 0.3], np.float32)


def _toy(n=10, height=6, width=5):
    """n random 2-channel images; label i identifies example i."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (n, height, width, 2), np.uint8)
    return x, np.arange(n, dtype=np.int64)


def _train(x, y, **kwargs):
    kwargs.setdefault("batch_size", 3)
    kwargs.setdefault("seed", 7)
    return data.train_dataset(x, y, pixel_mean=_MEAN, pixel_std=_STD, **kwargs)


def test_steps_per_epoch():
    assert data.steps_per_epoch(10, 3) == 3
    assert data.steps_per_epoch(12, 4) == 3
    assert data.steps_per_epoch(10, 10) == 1
    with pytest.raises(data.DatasetError, match="batch size 11 is larger than the 10 training"):
        data.steps_per_epoch(10, 11)
    with pytest.raises(data.DatasetError, match="positive"):
        data.steps_per_epoch(10, 0)


def test_train_dataset_rejects_batch_larger_than_data():
    x, y = _toy()
    with pytest.raises(data.DatasetError, match="larger than the 10 training"):
        _train(x, y, batch_size=11)


def test_train_dataset_element_spec_and_values():
    x, y = _toy()
    ds = _train(x, y)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape == (3, 6, 5, 2)
    assert images_spec.dtype == tf.float32
    assert labels_spec.shape == (3,)
    assert labels_spec.dtype == tf.int32
    for images, labels in _take(ds, 4):
        np.testing.assert_array_equal(images, _np_standardize(x[labels], _MEAN, _STD))


def test_train_dataset_is_infinite():
    x, y = _toy()
    # Unknown (flat_map) or infinite, never a finite count.
    assert _train(x, y).cardinality() in (tf.data.UNKNOWN_CARDINALITY, tf.data.INFINITE_CARDINALITY)
    assert len(_take(_train(x, y, batch_size=10), 5)) == 5


def _epoch_orders(ds, steps, epochs):
    labels = np.concatenate([batch_labels for _, batch_labels in _take(ds, steps * epochs)])
    return labels.reshape(epochs, -1)


def test_train_epoch_is_permutation():
    x, y = _toy(n=12)
    orders = _epoch_orders(_train(x, y, batch_size=4), steps=3, epochs=3)
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(12))
    # Each epoch has its own order.
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])


def test_train_epoch_drops_remainder():
    x, y = _toy(n=10)
    orders = _epoch_orders(_train(x, y, batch_size=3), steps=3, epochs=4)
    for order in orders:
        assert len(set(order)) == 9  # 9 distinct examples, one left out.
    # Not always the same example left out.
    assert len({tuple(sorted(set(range(10)) - set(o))) for o in orders}) > 1


def test_train_order_depends_on_seed_only():
    x, y = _toy(n=12)
    first = _epoch_orders(_train(x, y, batch_size=4, seed=7), 3, 2)
    again = _epoch_orders(_train(x, y, batch_size=4, seed=7), 3, 2)
    other = _epoch_orders(_train(x, y, batch_size=4, seed=8), 3, 2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("augment", [False, True])
def test_train_resume_is_exact(augment):
    x, y = _toy(n=10)  # 3 steps per epoch.
    reference = _take(_train(x, y, augment=augment), 11)
    for start in (1, 3, 4, 8):  # Mid-epoch, on and across epoch boundaries.
        resumed = _take(_train(x, y, augment=augment, start_step=start), 3)
        for (images, labels), (ref_images, ref_labels) in zip(
            resumed, reference[start : start + 3]
        ):
            np.testing.assert_array_equal(labels, ref_labels)
            np.testing.assert_array_equal(images, ref_images)


def _all_translations(image):
    """Every flip + shift of one uint8 image the augmentation may produce."""
    height, width = image.shape[:2]
    candidates = []
    for flipped in (image, image[:, ::-1]):
        padded = np.pad(flipped, [(2, 2), (2, 2), (0, 0)])
        for dy in range(5):
            for dx in range(5):
                candidates.append(padded[dy : dy + height, dx : dx + width])
    return candidates


def test_train_augmentation_flips_and_shifts():
    x, y = _toy(n=10)
    plain = _take(_train(x, y), 6)
    augmented = _take(_train(x, y, augment=True), 6)
    seen = set()
    for (images, labels), (_, plain_labels) in zip(augmented, plain):
        # Augmentation changes pixels, not the order.
        np.testing.assert_array_equal(labels, plain_labels)
        for image, label in zip(images, labels):
            matches = [
                i
                for i, c in enumerate(_all_translations(x[label]))
                if np.array_equal(image, _np_standardize(c, _MEAN, _STD))
            ]
            assert matches, f"example {label} is not a flip + shift of its input"
            seen.add(matches[0])
    # Random: several different transforms over 18 images, not just identity.
    assert len(seen) > 3


def test_eval_dataset_keeps_order_and_remainder():
    x, y = _toy(n=10)
    ds = data.eval_dataset(x, y, batch_size=4, pixel_mean=_MEAN, pixel_std=_STD)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape.as_list() == [None, 6, 5, 2]
    assert labels_spec.dtype == tf.int32
    batches = _take(ds, -1)
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), y)
    np.testing.assert_array_equal(
        np.concatenate([images for images, _ in batches]), _np_standardize(x, _MEAN, _STD)
    )


def test_eval_dataset_of_empty_split():
    x, y = _toy(n=10)
    ds = data.eval_dataset(x[:0], y[:0], batch_size=4, pixel_mean=_MEAN, pixel_std=_STD)
    assert not _take(ds, -1)


def test_pipelines_reject_bad_statistics():
    x, y = _toy()
    with pytest.raises(data.DatasetError, match="shape"):
        data.eval_dataset(x, y, batch_size=4, pixel_mean=[0.5], pixel_std=[0.2])
    with pytest.raises(data.DatasetError, match="positive"):
        data.eval_dataset(x, y, batch_size=4, pixel_mean=_MEAN, pixel_std=[0.2, 0.0])
