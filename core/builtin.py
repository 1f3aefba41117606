"""The same functions backed by TensorFlow's own implementations: the references normlab is
compared against, and the model's `builtin` mode.

Conventions of the built-ins, and what these wrappers do about them:

* All built-ins put eps inside the root, as normlab does; each wrapper passes eps explicitly
  (Keras' defaults are 1e-3, RMSNormalization's 1e-6, tf.compat.v1 fused batch norm's 1e-3).
* `tf.compat.v1.nn.fused_batch_norm(is_training=True)` returns the *unbiased* batch variance
  (divides by n - 1, Bessel's correction) although it normalizes with the biased one;
  `fused_batch_norm_and_moments` converts it back (times (n - 1) / n). It only takes 4-D
  NHWC input (other ranks are reshaped here) and no float64.
* Keras `LayerNormalization` normalizes over axis=-1 by default: for images that is a per-pixel
  norm over channels, not layer norm. These wrappers use axis=[1, ..., rank-1]; its gamma then
  has the full per-example shape, so a per-channel gamma is broadcast to it.
  `GroupNormalization(groups=1)` is the per-channel-gamma equivalent (`layer_norm_keras_group`).
* `tf.nn.moments` upcasts float16 but not bfloat16, `tf.nn.l2_normalize` computes in the input
  dtype, and the ops refuse float16 x with float32 gamma; so for float16/bfloat16 input the
  wrappers compute in float32 and cast the output back, as normlab does.
* `tf.nn.l2_normalize` floors the squared norm at 1e-12, like normlab's weight_norm.

Keras layers are used statelessly (`layer.stateless_call`) with the caller's gamma/beta, so
these are pure functions of their inputs and gradients reach the caller's tensors. Layers are
built once per configuration, outside any tf.function trace.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from normlab.core import _checks


def _compute_dtype(x: tf.Tensor) -> tf.DType:
    return _checks.stats_dtype(x.dtype)


def batch_norm_and_moments_nn(x, gamma, beta, eps=1e-3):
    """Batch norm by `tf.nn.moments` + `tf.nn.batch_normalization`; returns (y, mean, var)."""
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    dtype = _compute_dtype(x)
    xc = tf.cast(x, dtype)
    mean, variance = tf.nn.moments(xc, axes=list(range(x.shape.rank - 1)))
    y = tf.nn.batch_normalization(
        xc, mean, variance, tf.cast(beta, dtype), tf.cast(gamma, dtype), eps
    )
    return tf.cast(y, x.dtype), mean, variance


def batch_norm_nn(x, gamma, beta, eps=1e-3):
    """Batch norm by `tf.nn.moments` + `tf.nn.batch_normalization` (Keras' TF path)."""
    return batch_norm_and_moments_nn(x, gamma, beta, eps)[0]


def _as_nhwc(x: tf.Tensor) -> tf.Tensor:
    """Reshapes [N, ..., C] to the 4-D [N, H, W, C] fused_batch_norm takes (same statistics)."""
    if x.shape.rank == 4:
        return x
    shape = tf.shape(x)
    return tf.reshape(x, [shape[0], -1, 1, shape[-1]])


def fused_batch_norm_and_moments(x, gamma, beta, eps=1e-3):
    """Batch norm by `tf.compat.v1.nn.fused_batch_norm`; returns (y, mean, biased var).

    float16/bfloat16 x is fed as is (the op takes float32 scale/offset with them and computes
    its statistics in float32); float64 is not supported by the op.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    if x.dtype == tf.float64:
        raise TypeError("fused_batch_norm does not support float64; use batch_norm_nn.")
    y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
        _as_nhwc(x),
        tf.cast(gamma, tf.float32),
        tf.cast(beta, tf.float32),
        epsilon=eps,
        is_training=True,
    )
    n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
    return tf.reshape(y, tf.shape(x)), mean, unbiased * (n - 1.0) / n


def fused_batch_norm(x, gamma, beta, eps=1e-3):
    """Batch norm by `tf.compat.v1.nn.fused_batch_norm` (training mode)."""
    return fused_batch_norm_and_moments(x, gamma, beta, eps)[0]


def batch_norm_inference_nn(x, mean, variance, gamma, beta, eps=1e-3):
    """Inference-mode batch norm by `tf.nn.batch_normalization` with given statistics."""
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    dtype = _compute_dtype(x)
    y = tf.nn.batch_normalization(
        tf.cast(x, dtype),
        tf.cast(mean, dtype),
        tf.cast(variance, dtype),
        tf.cast(beta, dtype),
        tf.cast(gamma, dtype),
        eps,
    )
    return tf.cast(y, x.dtype)


@functools.lru_cache(maxsize=None)
def _keras_layer(kind: str, shape: tuple, dtype: str, **config) -> keras.layers.Layer:
    """A built Keras normalization layer, one per configuration, created eagerly."""
    with tf.init_scope():  # never create variables inside a tf.function trace
        layer = getattr(keras.layers, kind)(dtype=dtype, **config)
        layer.build(shape)
    return layer


def _static_shape(x: tf.Tensor) -> tuple:
    if not x.shape[1:].is_fully_defined():
        raise ValueError("the Keras references need the per-example shape x.shape[1:] to be known")
    return tuple([None] + x.shape.as_list()[1:])


def _keras_call(kind: str, x, weights, **config):
    """Runs a Keras normalization layer on x with the given weights, in float32 (or float64)."""
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    dtype = _compute_dtype(x)
    layer = _keras_layer(kind, _static_shape(x), dtype.name, **config)
    values = [
        tf.broadcast_to(tf.cast(w, dtype), v.shape)
        for w, v in zip(weights, layer.trainable_variables)
    ]
    y, _ = layer.stateless_call(values, [], tf.cast(x, dtype))
    return tf.cast(y, x.dtype)


def _per_example_axes(x) -> tuple:
    return tuple(range(1, len(x.shape)))


def layer_norm_keras(x, gamma, beta, eps=1e-3):
    """Layer norm by Keras `LayerNormalization(axis=[1, ..., rank-1])`; gamma, beta [C] or full."""
    return _keras_call(
        "LayerNormalization", x, [gamma, beta], axis=_per_example_axes(x), epsilon=eps
    )


def layer_norm_keras_group(x, gamma, beta, eps=1e-3):
    """Layer norm by Keras `GroupNormalization(groups=1)`; gamma, beta [C]."""
    return _keras_call("GroupNormalization", x, [gamma, beta], groups=1, axis=-1, epsilon=eps)


def group_norm_keras(x, gamma, beta, groups, eps=1e-3):
    """Group norm by Keras `GroupNormalization(groups)`; gamma, beta [C]."""
    return _keras_call("GroupNormalization", x, [gamma, beta], groups=groups, axis=-1, epsilon=eps)


def rms_norm_keras(x, gamma, eps=1e-6):
    """RMS norm by Keras `RMSNormalization(axis=[1, ..., rank-1])`; gamma [C] or full."""
    return _keras_call("RMSNormalization", x, [gamma], axis=_per_example_axes(x), epsilon=eps)


def weight_norm_l2(v, g):
    """Weight norm by `tf.nn.l2_normalize(v, axes) * g` (there is no built-in weight norm)."""
    v = _checks.as_float_tensor(v, "v", min_rank=2)
    dtype = _compute_dtype(v)
    direction = tf.nn.l2_normalize(tf.cast(v, dtype), axis=list(range(v.shape.rank - 1)))
    return tf.cast(direction * tf.cast(g, dtype), v.dtype)
