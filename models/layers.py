"""Dense and convolution layers with explicit tf.Variables and an optional kernel norm."""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from normlab import core

# The initialisers a layer can use: He normal (for ReLU nets) or the course's N(0, 0.1).
INITS = ("he", "course")


def initial_kernel(shape: list[int], init: str, seed: tf.Tensor) -> tf.Tensor:
    """A kernel drawn from a stateless normal: a pure function of (shape, init, seed)."""
    if init == "he":
        fan_in = math.prod(shape[:-1])
        stddev = math.sqrt(2.0 / fan_in)
    elif init == "course":
        stddev = 0.1
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return tf.random.stateless_normal(shape, seed=seed, stddev=stddev)


class _Affine(tf.Module):
    """What Dense and Conv2D share: a kernel (or v and g), an optional bias, weight norm.

    `linear(x, kernel)` is the layer's linear map: a matmul or a convolution. With
    `kernel_norm` (a function `(v, g) -> w`, e.g. core.weight_norm), the kernel is
    reparameterised as w = kernel_norm(v, g) with one g per output unit, g = ||v|| initially,
    so the layer starts as the same function as without it.
    """

    def __init__(
        self,
        linear: Callable,
        kernel_shape: list[int],
        *,
        use_bias: bool,
        kernel_norm: Callable | None = None,
        init: str = "he",
        seed: tf.Tensor,
        name: str,
    ):
        super().__init__(name=name)
        self._linear = linear
        self.kernel_norm = kernel_norm
        initial = initial_kernel(kernel_shape, init, seed)
        if kernel_norm is None:
            self.kernel = tf.Variable(initial, name="kernel")
        else:
            self.v = tf.Variable(initial, name="v")
            self.g = tf.Variable(core.kernel_norm(initial), name="g")
        self.bias = tf.Variable(tf.zeros([kernel_shape[-1]]), name="bias") if use_bias else None

    def effective_kernel(self) -> tf.Tensor:
        """The kernel the layer applies: v and g combined under a kernel norm."""
        if self.kernel_norm is None:
            return self.kernel
        return self.kernel_norm(self.v, self.g)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        y = self._linear(x, tf.cast(self.effective_kernel(), x.dtype))
        return y if self.bias is None else y + tf.cast(self.bias, y.dtype)

    def initialize_from_data(self, x: tf.Tensor, init_scale: float = 1.0) -> tf.Tensor:
        """Weight norm's data-dependent init (Salimans & Kingma 2016, section 3) on batch x.

        Sets g and the bias so this layer's outputs on x have zero mean and unit variance per
        unit, and returns those outputs (to initialise the next layer on).
        """
        if self.kernel_norm is None or self.bias is None:
            raise ValueError(f"{self.name}: data-dependent init needs weight norm and a bias")
        direction = core.weight_norm(self.v, tf.ones_like(self.g))
        g, b = core.data_dependent_init(self._linear(x, direction), init_scale)
        self.g.assign(g)
        self.bias.assign(b)
        return self(x)


class Dense(_Affine):
    """y = x @ w + b for x [N, in]; w is [in, out] (or kernel_norm(v, g))."""

    def __init__(self, units_in: int, units_out: int, **kwargs):
        super().__init__(tf.matmul, [units_in, units_out], **kwargs)


class Conv2D(_Affine):
    """A stride-1 SAME convolution over NHWC input; the kernel is [k, k, in, out]."""

    def __init__(self, kernel_size: int, channels_in: int, channels_out: int, **kwargs):
        super().__init__(
            _conv_same, [kernel_size, kernel_size, channels_in, channels_out], **kwargs
        )


def _conv_same(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
