"""Keras models for the tests of normlab's Keras layers: one builder, two layer namespaces.

Every model is built by the same code from `keras.layers` or from `normlab.models`, so a test
compares Keras' layer and normlab's in the same network with the same weights.
"""

from __future__ import annotations

import functools

import keras
import numpy as np

from normlab import data
from normlab.core import reference as ref

NORM_LAYERS = ("BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization")

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


def norm_layer_inputs(keras_model, ours_model, x):
    """(Keras' norm layer, normlab's, the input Keras' layer sees) for every norm layer."""
    probe = keras.Model(keras_model.inputs, [layer.input for layer in keras_model.layers])
    inputs = probe([x])
    pairs = zip(keras_model.layers, ours_model.layers, inputs)
    return [(k, o, h) for k, o, h in pairs if type(k).__name__ in NORM_LAYERS]


def reference(layer, x, dy, training=True):
    """(y, dx, d weights...) of sum(layer(x) * dy) in NumPy float64, from the layer's config
    and weights: the formulas of core/reference.py over the layer's axes (batch norm with the
    moving statistics unless training)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    kind, rank = type(layer).__name__, x.ndim
    weights = [np.asarray(w, np.float64) for w in layer.get_weights()]
    if kind == "GroupNormalization":  # view the channels as [groups, C / groups]
        c = layer.axis % rank
        shape = x.shape[:c] + (layer.groups, x.shape[c] // layer.groups) + x.shape[c + 1 :]
        param = [1] * c + list(shape[c : c + 2]) + [1] * (rank - c - 1)
        reduced = tuple(a for a in range(1, rank + 1) if a != c)
        view = x.reshape(shape)
    else:
        axes = [layer.axis] if isinstance(layer.axis, int) else layer.axis
        axes = sorted(a % rank for a in axes)
        if kind == "BatchNormalization":
            reduced = tuple(a for a in range(rank) if a != axes[0])
        else:
            reduced = tuple(axes)
        param = [x.shape[a] if a in axes else 1 for a in range(rank)]
        view = x
    dyv = dy.reshape(view.shape)
    scale = weights[0].reshape(param)
    summed = tuple(a for a in range(view.ndim) if param[a] == 1)
    if kind == "RMSNormalization":
        r = 1.0 / np.sqrt(np.mean(view**2, axis=reduced, keepdims=True) + layer.epsilon)
        y = view * r * scale
        dx = r * scale * dyv - view * r**3 * np.mean(
            scale * dyv * view, axis=reduced, keepdims=True
        )
        return y, dx, np.sum(dyv * view * r, axis=summed).reshape(weights[0].shape)
    if kind == "BatchNormalization" and not training:
        mean, var = weights[2].reshape(param), weights[3].reshape(param)
        xhat = (view - mean) / np.sqrt(var + layer.epsilon)
        dx = dyv * scale / np.sqrt(var + layer.epsilon)
    else:
        xhat = ref._normalize(view, reduced, layer.epsilon)[0]
        dx = ref._normalize_backward(view, reduced, layer.epsilon, dyv * scale)
    y = xhat * scale + weights[1].reshape(param)
    dgamma = np.sum(dyv * xhat, axis=summed).reshape(weights[0].shape)
    dbeta = np.sum(dyv, axis=summed).reshape(weights[1].shape)
    return y.reshape(x.shape), dx.reshape(x.shape), dgamma, dbeta
