"""Registry of the image data sets and their loading into memory."""

import contextlib
import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from normlab.data import download
from normlab.data.errors import DatasetError
from normlab.data.idx import find_idx_file, read_idx
from normlab.data.pipeline import eval_dataset, train_dataset

# Where the Debian/Ubuntu package `dataset-fashion-mnist` installs the files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The validation holdout uses its own fixed seed, independent of the training
# seed, so that every run validates on the same examples.
VALIDATION_SEED = 20251125

# Examples per batch when copying a TFDS split into memory.
_TFDS_CHUNK = 10000

_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data set holds and where it was read from.

    Attributes:
      name: The registry name, e.g. "fashion_mnist".
      image_shape: (height, width, channels) of one image.
      num_classes: Labels are integers in [0, num_classes).
      class_names: Human-readable name of each label.
      source: The directory the files were read from, or "tfds" (or
        "tfds:<data_dir>") when they came through TensorFlow Datasets.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    source: str


@dataclasses.dataclass
class Splits:
    """A data set in memory, split into train / validation / test.

    Images are uint8 [N, H, W, C]; labels are int64 [N].

    Attributes:
      train_x: Training images (what remains after the validation holdout).
      train_y: Training labels.
      val_x: Validation images, held out of the original training set.
      val_y: Validation labels.
      test_x: Test images.
      test_y: Test labels.
      info: The data set's description.
      pixel_mean: float32 [C], per-channel mean of train_x / 255.
      pixel_std: float32 [C], per-channel standard deviation of train_x / 255.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    info: DatasetInfo
    pixel_mean: np.ndarray
    pixel_std: np.ndarray

    def train_batches(
        self, *, batch_size: int, seed: int, augment: bool = False, start_step: int = 0
    ):
        """pipeline.train_dataset over the training part, standardized with its statistics."""
        return train_dataset(
            self.train_x,
            self.train_y,
            batch_size=batch_size,
            seed=seed,
            start_step=start_step,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            augment=augment,
        )

    def eval_batches(self, split: str, batch_size: int):
        """(pipeline.eval_dataset over "val" or "test", its labels)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be val or test, got {split!r}")
        x, y = (self.val_x, self.val_y) if split == "val" else (self.test_x, self.test_y)
        dataset = eval_dataset(
            x, y, batch_size=batch_size, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std
        )
        return dataset, y


_REGISTRY = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        source="",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        source="",
    ),
}


def load(name: str, data_dir: str | None, validation_size: int) -> Splits:
    """Loads a data set into memory and holds out a validation set.

    Fashion-MNIST is read from the four IDX files in `data_dir` when given;
    otherwise from DEFAULT_FASHION_MNIST_DIR when it holds them; otherwise
    through TFDS. CIFAR-10 comes only through TFDS, with `data_dir` as TFDS's
    data directory. A copy TFDS prepared in its data directory is read without
    a network; otherwise TFDS downloads one, and where its hosts do not answer
    the DatasetError comes within seconds, says what to do instead and nothing
    is left written.

    The validation set is `validation_size` examples of the original training
    set chosen by a permutation with the fixed seed VALIDATION_SEED, so it is the
    same in every run. Both parts keep the original order.

    Args:
      name: "fashion_mnist" or "cifar10".
      data_dir: See above; None for the defaults.
      validation_size: Examples to hold out, in [0, number of training examples).

    Returns:
      The splits, with the pixel statistics of the remaining training part.

    Raises:
      DatasetError: Unknown name, data missing or corrupt, bad validation_size.
    """
    if name not in _REGISTRY:
        raise DatasetError(
            f"unknown data set {name!r}; valid names: {', '.join(sorted(_REGISTRY))}"
        )
    if name == "fashion_mnist":
        arrays, source = _load_fashion_mnist(data_dir)
    else:
        arrays = _load_tfds(
            name,
            data_dir,
            failure=(
                "CIFAR-10 not available: it needs a TFDS download (internet)"
                " or --data_dir pointing to a TFDS data directory where"
                " cifar10 was prepared"
            ),
            offline=(
                "CIFAR-10 is not prepared in {root} and cannot be downloaded: {host} does not"
                " answer ({reason}). Run this command once on a machine with a network (TFDS"
                " downloads {size} and prepares cifar10 in ~/tensorflow_datasets) and copy"
                " that directory's cifar10/ into {root}, or pass --data_dir=DIR naming a TFDS"
                " data directory that holds a prepared copy (DIR/cifar10/{version}/)."
                " Nothing was written."
            ),
        )
        source = "tfds" if data_dir is None else f"tfds:{data_dir}"
    info = dataclasses.replace(_REGISTRY[name], source=source)

    train_x, train_y, test_x, test_y = arrays
    _check_split(info, "train", train_x, train_y)
    _check_split(info, "test", test_x, test_y)

    train_idx, val_idx = _validation_holdout(len(train_x), validation_size)
    mean, std = _pixel_stats(train_x[train_idx])
    return Splits(
        train_x=train_x[train_idx],
        train_y=train_y[train_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        info=info,
        pixel_mean=mean,
        pixel_std=std,
    )


def _load_fashion_mnist(data_dir):
    """Returns ((train_x, train_y, test_x, test_y), source)."""
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            what = "is not a directory" if os.path.exists(data_dir) else "does not exist"
            raise DatasetError(
                f"--data_dir={data_dir} {what}. Pass --data_dir=DIR naming the directory that"
                " holds the four Fashion-MNIST IDX files (.gz or not), or leave it out to use"
                f" {DEFAULT_FASHION_MNIST_DIR} (`apt-get install dataset-fashion-mnist`)."
            )
        return _read_fashion_mnist_dir(data_dir), data_dir
    if all(find_idx_file(DEFAULT_FASHION_MNIST_DIR, f) for f in _FASHION_MNIST_FILES.values()):
        return (_read_fashion_mnist_dir(DEFAULT_FASHION_MNIST_DIR), DEFAULT_FASHION_MNIST_DIR)
    arrays = _load_tfds(
        "fashion_mnist",
        None,
        failure=(
            f"Fashion-MNIST not found in {DEFAULT_FASHION_MNIST_DIR}:"
            " install it with `apt-get install dataset-fashion-mnist`"
            " (Debian/Ubuntu) or pass --data_dir=DIR holding the four IDX"
            " files; downloading through TFDS failed"
        ),
        offline=(
            f"Fashion-MNIST is neither in {DEFAULT_FASHION_MNIST_DIR} nor prepared in {{root}},"
            " and TFDS cannot download it: {host} does not answer ({reason}). Install it"
            " with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass"
            " --data_dir=DIR holding the four IDX files (.gz or not). Nothing was written."
        ),
    )
    return arrays, "tfds"


def _read_fashion_mnist_dir(directory):
    """Reads the four Fashion-MNIST IDX files (raw or .gz) from `directory`."""
    paths = {key: find_idx_file(directory, f) for key, f in _FASHION_MNIST_FILES.items()}
    missing = [_FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"{directory}: missing Fashion-MNIST file(s) {', '.join(missing)}"
            " (with or without .gz). Install them with `apt-get install"
            " dataset-fashion-mnist` (into"
            f" {DEFAULT_FASHION_MNIST_DIR}) or pass --data_dir to a directory"
            " holding all four."
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for key, ndim in (
        ("train_images", 3),
        ("train_labels", 1),
        ("test_images", 3),
        ("test_labels", 1),
    ):
        if arrays[key].ndim != ndim:
            raise DatasetError(
                f"{paths[key]}: expected {ndim} dimension(s), found"
                f" shape {arrays[key].shape}; is it the right file?"
            )
    # IDX holds [N, 28, 28]: add the channel axis; widen labels to int64 as
    # TFDS returns them.
    return (
        arrays["train_images"][..., np.newaxis],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][..., np.newaxis],
        arrays["test_labels"].astype(np.int64),
    )


def _load_tfds(name, data_dir, failure, offline):
    """Reads the TFDS train and test splits of `name` into numpy arrays.

    A copy already prepared in the data directory is read without any network access. Only
    when none is there does TFDS download one, and only after the download's hosts answered
    (download.unreachable_host, bounded in time): without a network TFDS itself would retry
    for minutes. Whatever a failed download created in the data directory is removed.

    Args:
      name: The TFDS name.
      data_dir: TFDS's data directory, or None for its default.
      failure: The start of the DatasetError message if TFDS fails; the reason
        is appended.
      offline: The DatasetError message when the download's hosts cannot be reached: one
        paragraph saying what to do instead, formatted with {root} (TFDS's data directory),
        {host}, {reason}, {size} (of the download) and {version} (of the data set).

    Returns:
      (train_x, train_y, test_x, test_y).
    """
    try:
        with _tfds_warnings_hidden():
            try:
                return _read_tfds(name, data_dir, False, failure)
            except AssertionError:
                # TFDS's "could not find data in <data_dir>": not prepared there, so a
                # download is needed.
                pass
            builder = tfds.builder(name, data_dir=data_dir)
        root = os.fspath(builder.data_dir_root)
        url_infos = builder.url_infos or {}
        unreachable = download.unreachable_host(url_infos)
        if unreachable:
            size = sum(int(info.size) for info in url_infos.values()) / 2**20
            raise DatasetError(
                offline.format(
                    root=root,
                    host=unreachable[0],
                    reason=unreachable[1],
                    size=f"{size:.0f} MiB",
                    version=builder.version,
                )
            )
        with download.removed_on_failure(root):
            return _read_tfds(name, data_dir, True, failure)
    except DatasetError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        # TFDS fails in many ways (DownloadError, OSError, DatasetNotFoundError, missing
        # optional modules...): all mean the same thing to the user.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatasetError(f"{failure}: {type(e).__name__}: {reason[:300]}") from e


def _read_tfds(name, data_dir, allow_download, failure):
    """(train_x, train_y, test_x, test_y) from tfds.load; TFDS's exceptions propagate."""
    arrays = []
    for split in ("train", "test"):
        ds = tfds.load(
            name, split=split, data_dir=data_dir, as_supervised=True, download=allow_download
        )
        # Batched by hand, not with batch_size=-1: that reads the split size from
        # info.splits and, when it is unknown (e.g. under tfds.testing.mock_data), batches
        # by sys.maxsize, which aborts the process.
        chunks = list(tfds.as_numpy(ds.batch(_TFDS_CHUNK)))
        if not chunks:
            raise DatasetError(
                f"{failure}: TFDS returned no examples for split {split!r} of {name}"
            )
        arrays.append(np.concatenate([images for images, _ in chunks]))
        arrays.append(np.concatenate([labels for _, labels in chunks]))
    return tuple(arrays)


@contextlib.contextmanager
def _tfds_warnings_hidden():
    """Hides TFDS's absl warnings while it looks for a prepared copy: "Variant folder ... has
    no dataset_info.json" only says that there is none, the case the caller handles."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_split(info, split, images, labels):
    """Raises DatasetError unless images/labels fit `info`."""
    where = f"{info.name} ({info.source}) {split} split"
    if images.dtype != np.uint8:
        raise DatasetError(f"{where}: images are {images.dtype}, expected uint8")
    if images.shape[1:] != info.image_shape:
        raise DatasetError(
            f"{where}: images have shape {images.shape[1:]}, expected {info.image_shape}"
        )
    if labels.ndim != 1:
        raise DatasetError(f"{where}: labels have shape {labels.shape}, expected [N]")
    if len(images) != len(labels):
        raise DatasetError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DatasetError(
            f"{where}: labels must be in [0, {info.num_classes}),"
            f" found values in [{labels.min()}, {labels.max()}]"
        )


def _validation_holdout(num_train, validation_size):
    """Returns sorted (train indices, validation indices) of a fixed split."""
    if not 0 <= validation_size < num_train:
        raise DatasetError(
            f"validation_size={validation_size} must be in [0, {num_train}): the"
            f" training set has {num_train} examples and at least one must stay"
            " for training"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(num_train)
    return np.sort(order[validation_size:]), np.sort(order[:validation_size])


def _pixel_stats(images):
    """Per-channel mean and standard deviation of images / 255, as float32.

    Computed from a histogram of the 256 byte values per channel: exact (in
    float64) and without a float copy of the whole set (1.2 GB for CIFAR-10).
    """
    channels = images.shape[-1]
    mean = np.empty(channels, np.float64)
    std = np.empty(channels, np.float64)
    values = np.arange(256, dtype=np.float64)
    for c in range(channels):
        counts = np.bincount(images[..., c].ravel(), minlength=256)
        total = counts.sum()
        mean[c] = (counts * values).sum() / total
        std[c] = np.sqrt((counts * (values - mean[c]) ** 2).sum() / total)
    return (mean / 255).astype(np.float32), (std / 255).astype(np.float32)
