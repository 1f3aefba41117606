"""Dense and convolution layers with explicit tf.Variables and optional weight normalization."""

from __future__ import annotations

import math

import tensorflow as tf

from normlab import core
from normlab.core import builtin

# The initialisers a layer can use: He normal (for ReLU nets) or the course's N(0, 0.1).
INITS = ("he", "course")


def _initial_kernel(shape: list[int], init: str, seed: tf.Tensor) -> tf.Tensor:
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

    `linear(x, kernel)` is the layer's linear map: a matmul or a convolution.
    """

    def __init__(
        self,
        linear,
        kernel_shape: list[int],
        *,
        use_bias: bool,
        weight_norm: bool,
        impl: str,
        init: str,
        seed: tf.Tensor,
        name: str,
    ):
        super().__init__(name=name)
        self._linear = linear
        initial = _initial_kernel(kernel_shape, init, seed)
        self.weight_norm = weight_norm
        self.impl = impl
        if weight_norm:
            # w = g * v / ||v||, with g = ||v|| initially: w starts equal to the plain kernel.
            self.v = tf.Variable(initial, name="v")
            self.g = tf.Variable(core.kernel_norm(initial), name="g")
        else:
            self.kernel = tf.Variable(initial, name="kernel")
        self.bias = tf.Variable(tf.zeros([kernel_shape[-1]]), name="bias") if use_bias else None

    def effective_kernel(self) -> tf.Tensor:
        """The kernel the layer applies: v and g combined under weight norm."""
        if not self.weight_norm:
            return self.kernel
        if self.impl == "builtin":
            return builtin.weight_norm_l2(self.v, self.g)
        return core.weight_norm(self.v, self.g)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        y = self._linear(x, self.effective_kernel())
        return y if self.bias is None else y + self.bias

    def initialize_from_data(self, x: tf.Tensor, init_scale: float = 1.0) -> tf.Tensor:
        """Weight norm's data-dependent init (Salimans & Kingma 2016, section 3) on batch x.

        Sets g and the bias so this layer's outputs on x have zero mean and unit variance per
        unit, and returns those outputs (to initialise the next layer on).
        """
        if not self.weight_norm or self.bias is None:
            raise ValueError(f"{self.name}: data-dependent init needs weight norm and a bias")
        direction = core.weight_norm(self.v, tf.ones_like(self.g))
        g, b = core.data_dependent_init(self._linear(x, direction), init_scale)
        self.g.assign(g)
        self.bias.assign(b)
        return self(x)


class Dense(_Affine):
    """y = x @ w + b for x [N, in]; w is [in, out] (or g * v / ||v|| under weight norm)."""

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
