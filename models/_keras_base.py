"""What normlab's Keras layers share: argument checks, the per-example norm, gamma and beta."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from normlab import core

PACKAGE = "normlab"  # the registered names are "normlab>BatchNormalization", ...


def canonical_axes(axis, rank: int, layer: str) -> list[int]:
    """`axis` (an int or a list of ints, negative counting from the end) as sorted axes in
    [0, rank), or a clear error naming the layer."""
    axes = axis_argument(axis, layer)
    axes = axes if isinstance(axes, list) else [axes]
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise ValueError(f"{layer}: axis={axis!r} is out of range or repeated for rank {rank}.")
    return sorted(a % rank for a in axes)


def axis_argument(axis, layer: str):
    """`axis` as Keras stores it (an int, or a list of ints), after checking its type."""
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not axes or any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
        raise TypeError(f"{layer}: axis must be an int or a list of ints, got {axis!r}.")
    return axes if isinstance(axis, (list, tuple)) else axis


def check_epsilon(epsilon, layer: str) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"{layer}: epsilon must be a number > 0, got {epsilon!r}.")
    return float(epsilon)


def _stats_dtype(x: tf.Tensor) -> tf.DType:
    return tf.float64 if x.dtype == tf.float64 else tf.float32


def per_example(x, axes, gamma, beta, eps, *, rms: bool = False) -> tf.Tensor:
    """Normalizes x over `axes` per slice; gamma / beta shaped like those axes (beta None: RMS).

    RMS norm over trailing axes: core.rms_norm with backward="autodiff" on x viewed as
    [-1, size] (a free reshape). Its closed form is faster with a known batch size (the
    trainer's case) but slower in model.fit, which traces with an unknown one (both measured
    by bench.keras_fit; bench/README.md). Layer norm over one trailing axis (`axis=-1`):
    core.layer_norm on x viewed as [-1, 1, C] (rank 3, not [-1, C]: the closed form compiles
    image-sized inputs of rank >= 3 only). Layer norm over several trailing axes (e.g. every
    non-batch axis): core.layer_norm with unit scale on x viewed as [-1, size, 1], then the
    element-wise gamma and beta, because the closed form's backward is fastest with gamma
    constant over the normalized axis; the arithmetic stays in float32 until the final cast.
    Other axes: core.moments / core.normalize (corrected two-pass statistics, differentiated
    by TensorFlow).
    """
    rank = x.shape.rank
    dtype = _stats_dtype(x)
    if axes == list(range(rank - len(axes), rank)):
        width = math.prod(x.shape[a] for a in axes)
        if rms:
            flat, scale = tf.reshape(x, [-1, width]), tf.reshape(gamma, [width])
            y = core.rms_norm(flat, scale, eps, backward="autodiff")
        elif len(axes) == 1:
            y = core.layer_norm(tf.reshape(x, [-1, 1, width]), gamma, beta, eps)
        else:
            unit = tf.ones([1], dtype), tf.zeros([1], dtype)
            xhat = core.layer_norm(tf.reshape(tf.cast(x, dtype), [-1, width, 1]), *unit, eps)
            flat = [tf.cast(tf.reshape(p, [width, 1]), dtype) for p in (gamma, beta)]
            y = tf.cast(xhat * flat[0] + flat[1], x.dtype)
        return tf.reshape(y, tf.shape(x))
    shape = [x.shape[a] if a in axes else 1 for a in range(rank)]
    gamma = tf.reshape(gamma, shape)
    if rms:
        mean_square = tf.reduce_mean(tf.square(tf.cast(x, dtype)), axis=axes, keepdims=True)
        return core.normalize(x, tf.zeros([], dtype), mean_square, gamma, None, eps)
    mean, variance = core.moments(x, axes, keepdims=True)
    return core.normalize(x, mean, variance, gamma, tf.reshape(beta, shape), eps)


# The per-weight arguments of gamma and beta, and the Keras modules that get / serialize them.
_AFFINE_ARGUMENTS = {
    "initializer": keras.initializers,
    "regularizer": keras.regularizers,
    "constraint": keras.constraints,
}


class Norm(keras.layers.Layer):
    """What the four norms share: gamma / beta from the Keras arguments, constants if absent."""

    def _affine_init(self, center, scale, beta_args, gamma_args):
        """center, scale, and (initializer, regularizer, constraint) of beta and of gamma."""
        self.center, self.scale = bool(center), bool(scale)
        for name, args in (("beta", beta_args), ("gamma", gamma_args)):
            for kind, value in zip(_AFFINE_ARGUMENTS, args):
                setattr(self, f"{name}_{kind}", _AFFINE_ARGUMENTS[kind].get(value))
        self.gamma = self.beta = None

    def _add_affine(self, shape) -> None:
        """gamma then beta, as Keras creates them (float32 under mixed precision, no autocast)."""
        for name, wanted in (("gamma", self.scale), ("beta", self.center)):
            if wanted:
                args = {kind: getattr(self, f"{name}_{kind}") for kind in _AFFINE_ARGUMENTS}
                setattr(self, name, self.add_weight(shape=shape, name=name, autocast=False, **args))

    def _affine(self, shape) -> tuple:
        """(gamma, beta) to hand to core: the weights, or ones / zeros without scale / center."""
        gamma = self.gamma if self.scale else tf.ones(shape, self.variable_dtype)
        beta = self.beta if self.center else tf.zeros(shape, self.variable_dtype)
        return gamma, beta

    def _affine_config(self) -> dict:
        config = {"center": self.center, "scale": self.scale}
        for name in ("beta", "gamma"):
            for kind, module in _AFFINE_ARGUMENTS.items():
                config[f"{name}_{kind}"] = module.serialize(getattr(self, f"{name}_{kind}"))
        return config

    def compute_output_shape(self, input_shape):
        return input_shape
