"""Input pipelines over in-memory images: tf.data datasets, and the same training batches
computed inside a compiled loop (InGraphBatches)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from normlab.data.errors import DatasetError

# Independent random streams derived from the one training seed: the epoch
# order and the augmentation must not reuse each other's random numbers.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1

# Largest translation of the augmentation, in pixels.
_MAX_SHIFT = 2


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of full batches in one epoch of `n` examples (the rest is dropped).

    Raises:
      DatasetError: batch_size is not positive or larger than n.
    """
    if batch_size <= 0:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    if batch_size > n:
        raise DatasetError(
            f"the batch size {batch_size} is larger than the {n} training examples: choose a "
            "smaller --batch_size (or a smaller --validation_size)."
        )
    return n // batch_size


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    pixel_mean: Sequence[float] | np.ndarray,
    pixel_std: Sequence[float] | np.ndarray,
    augment: bool = False,
) -> tf.data.Dataset:
    """An infinite, shuffled stream of standardized training batches.

    Epoch e visits the examples in an order that is a pure function of
    (seed, e), and the augmentation of step s is a pure function of (seed, s).
    So the stream is a pure function of (seed, step): started at `start_step`,
    it yields exactly the batches an uninterrupted run yields from that step on,
    with nothing to checkpoint. Each epoch drops its last partial batch, so it
    has `steps_per_epoch(len(x), batch_size)` steps.

    Args:
      x: uint8 images [N, H, W, C].
      y: Integer labels [N].
      batch_size: Examples per batch.
      seed: Seed of the epoch orders and of the augmentation.
      start_step: Global step (batch index from the start of training) of the
        first batch.
      pixel_mean: [C] mean of x / 255.
      pixel_std: [C] standard deviation of x / 255.
      augment: Randomly flip images horizontally and translate them by up to 2
        pixels (zero padding).

    Returns:
      A dataset of (float32 [B, H, W, C] images `(x / 255 - mean) / std`,
      int32 [B] labels).

    Raises:
      DatasetError: Bad shapes, batch size or start_step.
    """
    mean, std = _check_inputs(x, y, pixel_mean, pixel_std)
    n = len(x)
    steps = steps_per_epoch(n, batch_size)
    if start_step < 0:
        raise DatasetError(f"start_step must be >= 0, got {start_step}")
    first_epoch, offset = divmod(start_step, steps)
    images = tf.constant(x)
    labels = tf.cast(tf.constant(y), tf.int32)
    seed = tf.constant(seed, tf.int64)

    def epoch_batches(epoch):
        # Shuffle indices, not images: cheap, and the order is a pure function of
        # (seed, epoch).
        key = tf.random.experimental.stateless_fold_in(tf.stack([seed, _SHUFFLE_STREAM]), epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
        batches = tf.reshape(order[: steps * batch_size], [steps, batch_size])
        first = epoch * steps
        return tf.data.Dataset.from_tensor_slices((tf.range(first, first + steps), batches))

    def make_batch(step, indices):
        batch = tf.gather(images, indices)
        if augment:
            key = tf.random.experimental.stateless_fold_in(tf.stack([seed, _AUGMENT_STREAM]), step)
            batch = _augment(batch, key)
        return _standardize(batch, mean, std), tf.gather(labels, indices)

    # Skip index batches before gathering, so resuming costs nothing.
    ds = (
        tf.data.Dataset.counter(first_epoch)
        .flat_map(epoch_batches)
        .skip(offset)
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return _deterministic(ds)


class InGraphBatches:
    """The batches of `train_dataset` (same arguments, bitwise the same batches in the same
    order), made by ops a compiled training loop runs itself: no tf.data iterator per step.

    The images stay one uint8 tensor. Before a compiled call that takes up to n batches, the
    host puts their example indices in a variable (`prepare(n)`: n rows sliced from the
    epochs' orders, each a pure function of seed and epoch computed by the same stateless
    shuffle as train_dataset, once per epoch); each step inside the call gathers its row's
    images, augments them with train_dataset's own function (keyed by the step) and
    standardizes them by a table lookup. No branch inside the loop: a per-step cond for a
    reshuffle needed once per epoch would run at every step.

    `position` is the global step of the next batch; `reset(step)` moves it (a resumed run, a
    new segment of training), so one object and one trace serve a Trainer's whole life.
    Nothing here is checkpointed: the stream is a function of the step.

    `prepare(n)` then `next_in_graph()` up to n times inside a tf.function (TrainStep.loop);
    `next(batches)` does both for one batch, compiled. One replica only: tf.distribute splits
    batches over replicas through tf.data.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        pixel_mean: Sequence[float] | np.ndarray,
        pixel_std: Sequence[float] | np.ndarray,
        augment: bool = False,
    ):
        self.mean, self.std = _check_inputs(x, y, pixel_mean, pixel_std)
        self.n, self.batch_size, self.augment = len(x), batch_size, augment
        self.steps = steps_per_epoch(self.n, batch_size)
        self.images = tf.constant(x)
        self.labels = tf.cast(tf.constant(y), tf.int32)
        self.seed = tf.constant(seed, tf.int64)
        # _standardize of every uint8 value in every channel, flattened [256 * C], computed
        # here, eagerly: inside a compiled step Grappler rewrites (x / 255 - mean) / std into
        # other arithmetic that rounds differently from tf.data's map; a table lookup is
        # exactly tf.data's values (and one op instead of four).
        self.channels = x.shape[-1]
        values = tf.range(256, dtype=tf.int32)[:, None]
        self.table = tf.reshape(_standardize(values, self.mean, self.std), [-1])
        self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="position")
        self.rows = tf.Variable(tf.zeros([0, batch_size], tf.int32), trainable=False,
                                shape=tf.TensorShape([None, batch_size]), name="rows")  # fmt: skip
        self.cursor = tf.Variable(0, dtype=tf.int32, trainable=False, name="cursor")
        self._orders: dict[int, np.ndarray] = {}
        self._next = tf.function(self.next_in_graph, autograph=False)
        self.reset(start_step)

    def reset(self, step: int) -> InGraphBatches:
        """The next batch is that of global step `step`; returns self."""
        if step < 0:
            raise DatasetError(f"start_step must be >= 0, got {step}")
        self.position.assign(step)
        return self

    def _order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of the examples, as train_dataset computes it."""
        if epoch not in self._orders:
            key = tf.random.experimental.stateless_fold_in(  # int64, as train_dataset's
                tf.stack([self.seed, _SHUFFLE_STREAM]), tf.constant(epoch, tf.int64)
            )
            order = tf.random.experimental.stateless_shuffle(tf.range(self.n), seed=key)
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = order.numpy()
        return self._orders[epoch]

    def prepare(self, n: int) -> None:
        """Puts the example indices of the next n batches where next_in_graph reads them."""
        b, first = self.batch_size, int(self.position.numpy())
        rows = []
        for step in range(first, first + n):
            epoch, offset = divmod(step, self.steps)
            rows.append(self._order(epoch)[offset * b : (offset + 1) * b])
        self.rows.assign(np.stack(rows))
        self.cursor.assign(0)

    def next_in_graph(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The next prepared batch (images, labels); advances."""
        with tf.name_scope("input"):  # bench.profile's data-input part
            indices = tf.gather(self.rows.read_value(), self.cursor.read_value())
            batch = tf.gather(self.images, indices)
            if self.augment:
                key = tf.random.experimental.stateless_fold_in(
                    tf.stack([self.seed, _AUGMENT_STREAM]), self.position.read_value()
                )
                batch = _augment(batch, key)
            self.cursor.assign_add(1)
            self.position.assign_add(1)
            index = tf.cast(batch, tf.int32)
            if self.channels > 1:
                index = index * self.channels + tf.range(self.channels)
            return tf.gather(self.table, index), tf.gather(self.labels, indices)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[tf.Tensor, tf.Tensor]:
        self.prepare(1)
        return self._next()


def eval_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    pixel_mean: Sequence[float] | np.ndarray,
    pixel_std: Sequence[float] | np.ndarray,
) -> tf.data.Dataset:
    """One pass over (x, y) in order, standardized like `train_dataset`.

    The last batch is partial when batch_size does not divide len(x), so every
    example is evaluated exactly once.

    Args:
      x: uint8 images [N, H, W, C].
      y: Integer labels [N].
      batch_size: Examples per batch (the last one may be smaller).
      pixel_mean: [C] mean of the training images / 255.
      pixel_std: [C] standard deviation of the training images / 255.

    Returns:
      A dataset of (float32 [<=B, H, W, C] images, int32 [<=B] labels).
    """
    mean, std = _check_inputs(x, y, pixel_mean, pixel_std)
    if batch_size <= 0:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    images = tf.constant(x)
    labels = tf.cast(tf.constant(y), tf.int32)

    def make_batch(indices):
        return (_standardize(tf.gather(images, indices), mean, std), tf.gather(labels, indices))

    ds = (
        tf.data.Dataset.range(len(x))
        .batch(batch_size)
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return _deterministic(ds)


def _standardize(images, mean, std):
    """uint8 images -> float32 (images / 255 - mean) / std, per channel."""
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def _augment(images, key):
    """Random horizontal flip and translation by up to _MAX_SHIFT pixels.

    Each image of the batch gets its own flip and shift; all are a pure
    function of `key`.

    Args:
      images: [B, H, W, C] images (any dtype).
      key: int64 [2] stateless seed.

    Returns:
      Augmented images, same shape and dtype.
    """
    flip_key, shift_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]

    flip = tf.random.stateless_uniform([batch], seed=flip_key) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)

    # Translate by cropping a window at a random offset from the zero-padded
    # image; zero is the background of Fashion-MNIST.
    padded = tf.pad(images, [[0, 0], [_MAX_SHIFT, _MAX_SHIFT], [_MAX_SHIFT, _MAX_SHIFT], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed=shift_key, minval=0, maxval=2 * _MAX_SHIFT + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None, :]  # [B, H]
    cols = offsets[:, 1:] + tf.range(width)[None, :]  # [B, W]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def _check_inputs(x, y, pixel_mean, pixel_std):
    """Validates the arrays; returns mean and std as float32 [C] tensors."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DatasetError(f"images must be uint8 [N, H, W, C], got {x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise DatasetError(f"labels must have shape ({len(x)},) to match the images, got {y.shape}")
    channels = x.shape[-1]
    mean = np.asarray(pixel_mean, np.float32)
    std = np.asarray(pixel_std, np.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DatasetError(
            f"pixel_mean and pixel_std must have shape"
            f" ({channels},), got {mean.shape} and {std.shape}"
        )
    if not np.all(std > 0):
        raise DatasetError(
            f"pixel_std must be positive, got {std}: are the training images constant?"
        )
    return tf.constant(mean), tf.constant(std)


def _deterministic(ds):
    options = tf.data.Options()
    # Parallel map must still yield in order: runs are reproducible and resume
    # exactly.
    options.deterministic = True
    return ds.with_options(options)
