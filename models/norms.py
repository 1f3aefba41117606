"""Normalization modules: explicit variables, the core functions or TF's built-ins inside."""

from __future__ import annotations

import tensorflow as tf

import core
from core import builtin

IMPLS = ("custom", "builtin")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


class BatchNorm(tf.Module):
    """Batch norm over every axis but the last, with float32 moving statistics.

    Training: y uses the batch's mean and biased variance, and the moving statistics move
    towards them: moving = moving * momentum + batch * (1 - momentum). Inference: y uses the
    moving statistics, which do not change. `training` is a required argument.
    """

    def __init__(
        self,
        channels: int,
        *,
        impl: str = "custom",
        momentum: float = 0.99,
        eps: float = 1e-3,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.impl = _check_impl(impl)
        self.momentum = momentum
        self.eps = eps
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")
        self.moving_mean = tf.Variable(tf.zeros([channels]), trainable=False, name="moving_mean")
        self.moving_variance = tf.Variable(
            tf.ones([channels]), trainable=False, name="moving_variance"
        )

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        if not training:
            fn = (
                core.batch_norm_inference
                if self.impl == "custom"
                else (builtin.batch_norm_inference_nn)
            )
            return fn(x, self.moving_mean, self.moving_variance, self.gamma, self.beta, self.eps)
        fn = (
            core.batch_norm_and_moments
            if self.impl == "custom"
            else (builtin.fused_batch_norm_and_moments)
        )
        y, mean, variance = fn(x, self.gamma, self.beta, self.eps)
        # The moving averages are bookkeeping, not part of the function being differentiated.
        self.moving_mean.assign(
            core.moving_average_update(self.moving_mean, tf.stop_gradient(mean), self.momentum)
        )
        self.moving_variance.assign(
            core.moving_average_update(
                self.moving_variance, tf.stop_gradient(variance), self.momentum
            )
        )
        return y


class LayerNorm(tf.Module):
    """Layer norm: per example over every axis but the first; per-channel gamma and beta."""

    def __init__(
        self, channels: int, *, impl: str = "custom", eps: float = 1e-3, name: str | None = None
    ):
        super().__init__(name=name)
        self.impl = _check_impl(impl)
        self.eps = eps
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        del training  # the same computation in training and inference
        fn = core.layer_norm if self.impl == "custom" else builtin.layer_norm_keras
        return fn(x, self.gamma, self.beta, self.eps)


class GroupNorm(tf.Module):
    """Group norm: per example over each group of channels (and all positions)."""

    def __init__(
        self,
        channels: int,
        groups: int,
        *,
        impl: str = "custom",
        eps: float = 1e-3,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if channels % groups:
            raise ValueError(f"groups ({groups}) must divide the channels ({channels})")
        self.impl = _check_impl(impl)
        self.groups = groups
        self.eps = eps
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        del training
        fn = core.group_norm if self.impl == "custom" else builtin.group_norm_keras
        return fn(x, self.gamma, self.beta, self.groups, self.eps)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The group count used for a layer of n channels: the largest divisor of n <= limit."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
