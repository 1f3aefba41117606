"""Keras models for the tests of normlab's Keras layers: one builder, two layer namespaces.

Every model is built by the same code from `keras.layers` or from `normlab.models`, so a test
compares Keras' layer and normlab's in the same network with the same weights.
"""

from __future__ import annotations

import functools

import keras
import numpy as np

from normlab import data

# norm -> (layer name, arguments after the convolutions, arguments after the dense layer)
NORMS = {
    "batch": ("BatchNormalization", {}, {}),
    "layer": ("LayerNormalization", {}, {}),
    "layer_all_axes": ("LayerNormalization", {"axis": [1, 2, 3]}, {"axis": -1}),
    "group": ("GroupNormalization", {"groups": 4}, {"groups": 8}),
    "instance": ("GroupNormalization", {"groups": -1}, {"groups": 16}),
    "rms": ("RMSNormalization", {}, {}),
}


@functools.cache
def fashion_mnist(count: int = 512, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` real Fashion-MNIST training images from `offset`, standardized, and labels."""
    splits = data.load("fashion_mnist", None, validation_size=0)
    images = splits.train_x[offset : offset + count].astype(np.float32) / 255.0
    return (images - splits.pixel_mean) / splits.pixel_std, splits.train_y[offset : offset + count]


def cnn(namespace, norm: str, dtype=None, **norm_args) -> keras.Sequential:
    """conv 3x3 8 - norm - ReLU - maxpool - conv 3x3 16 - norm - ReLU - maxpool - dense 32 -
    norm - ReLU - dense 10, as a Sequential model with the norms taken from `namespace`. The
    layers before a norm have no bias (beta takes that role; its gradient would be zero)."""
    name, conv_args, dense_args = NORMS[norm]
    layer = getattr(namespace, name)
    dense = {"kernel_initializer": keras.initializers.HeNormal(seed=1), "dtype": dtype}
    layers = [keras.Input((28, 28, 1))]
    for width in (8, 16):
        layers += [
            keras.layers.Conv2D(width, 3, padding="same", use_bias=False, **dense),
            layer(**conv_args, **norm_args, dtype=dtype),
            keras.layers.ReLU(dtype=dtype),
            keras.layers.MaxPooling2D(dtype=dtype),
        ]
    layers += [
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(32, use_bias=False, **dense),
        layer(**dense_args, **norm_args, dtype=dtype),
        keras.layers.ReLU(dtype=dtype),
        keras.layers.Dense(10, **dense),
    ]
    return keras.Sequential(layers)


def channels_first(namespace) -> keras.Model:
    """A functional model whose norms see channels first: batch norm (axis=1), group norm
    (axis=1), layer norm over (C, H) and RMS norm over (H, W): the non-default axis paths."""
    init = keras.initializers.HeNormal(seed=2)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, 2, "same", use_bias=False, kernel_initializer=init)(inputs)
    h = keras.layers.Permute((3, 1, 2))(h)  # [N, 8, 14, 14]
    h = namespace.BatchNormalization(axis=1)(h)
    h = keras.layers.ReLU()(h)
    h = namespace.GroupNormalization(groups=2, axis=1)(h)
    h = namespace.LayerNormalization(axis=[1, 2])(h)
    h = namespace.RMSNormalization(axis=[2, 3])(h)
    outputs = keras.layers.Dense(10, kernel_initializer=init)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs)


def randomize_weights(model: keras.Model, seed: int = 0) -> None:
    """Gives every norm weight a value other than its initial one (an all-ones gamma or a
    zero beta would hide an axis or order mistake); variances stay positive."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        name = weight.path.split("/")[-1]
        if name in ("gamma", "scale", "moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
        elif name in ("beta", "moving_mean"):
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype(np.float32))


def max_rel(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))
