"""Synchronized batch norm by Keras `BatchNormalization(synchronized=True)`: the built-in reference.

Keras (TensorFlow backend) all-reduces sum(x), sum(x^2) and the count over the replicas and
computes the variance in one pass, max(E[x^2] - E[x]^2, 0); its output is
`tf.nn.batch_normalization` with those statistics. In float32 that loses the variance at large
offsets (see core.cross_replica, which does not); on ordinary data both agree.

The layer is used statelessly (`layer.stateless_call`) with the caller's gamma and beta, so this
is a pure function whose gradients reach the caller's tensors. To read the global statistics the
layer used, it is built with momentum 0: Keras' update `moving * momentum + batch * (1 -
momentum)` then returns exactly the batch mean and variance as its "new moving statistics",
which the caller folds into its own moving averages with its own momentum.
"""

from __future__ import annotations

import threading

import keras
import tensorflow as tf

from normlab.core import _checks

_LAYERS: dict[tuple, keras.layers.Layer] = {}
# MirroredStrategy runs each replica's function in its own thread: build each layer once.
_LOCK = threading.Lock()


def keras_sync_layer(channels: int, dtype: tf.DType, eps: float) -> keras.layers.Layer:
    """The built `BatchNormalization(synchronized=True, momentum=0)` for [N, channels] input.

    One layer per (channels, dtype, eps), created on first use. Its own variables are never
    read (stateless_call replaces them), but creating them inside `strategy.run` makes the
    strategy create mirrored variables from a replica; to avoid that, call this once outside
    (`models.BatchNorm(sync=True, impl="builtin")` does, in its constructor).
    """
    key = (int(channels), tf.as_dtype(dtype).name, float(eps))
    with _LOCK:
        if key not in _LAYERS:
            with tf.init_scope():  # never create variables inside a tf.function trace
                layer = keras.layers.BatchNormalization(
                    synchronized=True, momentum=0.0, epsilon=key[2], dtype=key[1]
                )
                layer.build((None, key[0]))
            _LAYERS[key] = layer
        return _LAYERS[key]


def batch_norm_and_moments_keras_sync(x, gamma, beta, eps=1e-3):
    """Training-mode synchronized batch norm by Keras; returns (y, mean, variance).

    Reduces over every axis but the last and over the replicas of the current replica context
    (with no strategy, over x alone). x is reshaped to [-1, C] (the same statistics) so one
    layer per channel count serves every rank.

    Args:
        x: [N, ..., C] float tensor; float16/bfloat16 are computed in float32 and cast back.
        gamma, beta: [C].
        eps: > 0, inside the root (Keras' own default is 1e-3 too).

    Returns:
        (y in x's dtype, mean [C], biased variance [C]); the statistics in float32 (float64 for
        float64 x) and, under a strategy, the same on every replica.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    eps = _checks.check_eps(eps)
    channels = x.shape[-1]
    if channels is None:
        raise ValueError("batch_norm_keras_sync needs the channel count x.shape[-1] to be known")
    dtype = _checks.stats_dtype(x.dtype)
    layer = keras_sync_layer(channels, dtype, eps)
    zeros = tf.zeros([channels], dtype)
    y, (mean, variance) = layer.stateless_call(
        [tf.cast(gamma, dtype), tf.cast(beta, dtype)],
        [zeros, zeros],  # the "moving" statistics; with momentum 0 the update returns the batch's
        tf.reshape(tf.cast(x, dtype), [-1, channels]),
        training=True,
    )
    return tf.cast(tf.reshape(y, tf.shape(x)), x.dtype), mean, variance


def batch_norm_keras_sync(x, gamma, beta, eps=1e-3):
    """Training-mode synchronized batch norm by Keras `BatchNormalization(synchronized=True)`."""
    return batch_norm_and_moments_keras_sync(x, gamma, beta, eps)[0]
