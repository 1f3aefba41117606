"""Small learnable synthetic data in memory or as IDX files: for tests, drills and demos."""

from __future__ import annotations

import numpy as np

from normlab.data.datasets import DatasetInfo, Splits


def tiny_splits(
    n_train: int = 192, n_val: int = 64, n_test: int = 64, seed: int = 0, classes: int = 10
) -> Splits:
    """28x28x1 uint8 images whose class is a bright 6x6 patch's position, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, k in enumerate(labels):
            row, col = divmod(int(k), 4)
            images[i, 2 + 7 * row : 8 + 7 * row, 2 + 6 * col : 8 + 6 * col, 0] += 150
        return images, labels.astype(np.int64)

    (tx, ty), (vx, vy), (sx, sy) = make(n_train), make(n_val), make(n_test)
    scaled = tx.astype(np.float64) / 255.0
    info = DatasetInfo(
        name="tiny",
        image_shape=(28, 28, 1),
        num_classes=classes,
        class_names=tuple(f"c{k}" for k in range(classes)),
        source="memory",
    )
    return Splits(
        train_x=tx,
        train_y=ty,
        val_x=vx,
        val_y=vy,
        test_x=sx,
        test_y=sy,
        info=info,
        pixel_mean=np.float32([scaled.mean()]),
        pixel_std=np.float32([scaled.std()]),
    )


def write_idx_dataset(directory, splits: Splits | None = None) -> None:
    """Writes splits (train+val as the training file) as the four Fashion-MNIST IDX files."""
    import gzip
    import os
    import struct

    splits = splits or tiny_splits(n_train=256, n_val=64, n_test=100)
    os.makedirs(directory, exist_ok=True)
    train_x = np.concatenate([splits.train_x, splits.val_x])
    train_y = np.concatenate([splits.train_y, splits.val_y])
    for prefix, x, y in (("train", train_x, train_y), ("t10k", splits.test_x, splits.test_y)):
        images = x[..., 0].astype(np.uint8)
        with gzip.open(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, *images.shape) + images.tobytes())
        with open(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), "wb") as fh:
            fh.write(struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes())
