"""Normalization modules: explicit variables, the core functions or TF's built-ins inside."""

from __future__ import annotations

import functools

import tensorflow as tf

from normlab import core
from normlab.core import builtin, builtin_sync

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

    Under `tf.distribute` (MirroredStrategy, MultiWorkerMirroredStrategy), `sync=True` makes
    "the batch" the global batch: the statistics are all-reduced over the replicas
    (core.sync_batch_norm_and_moments for impl="custom"; Keras
    `BatchNormalization(synchronized=True)` for impl="builtin"), so every replica normalizes
    with, and moves its moving statistics towards, the same values, and one step on R replicas
    equals one step on one device with the whole batch. Without a strategy `sync` changes
    nothing. With `sync=False` each replica uses its own slice's statistics.

    Create the module inside `strategy.scope()`; the moving statistics are then mirrored
    variables, assigned from inside `strategy.run` with an aggregation that says how the
    replicas' values combine:

    * sync=True: `ONLY_FIRST_REPLICA`. Every replica computed the same global statistics, so
      the first replica's value is the value: exact, and no extra communication.
    * sync=False: `MEAN`. The replicas' values differ; the moving statistics become the mean of
      the per-replica updates (the mean of the slices' means and of their variances).

    Outside a strategy the aggregation has no effect.
    """

    def __init__(
        self,
        channels: int,
        *,
        impl: str = "custom",
        momentum: float = 0.99,
        eps: float = 1e-3,
        sync: bool = False,
        backward: str = "closed_form",
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.impl = _check_impl(impl)
        self.backward = backward  # custom impl: "closed_form" or "autodiff" (core/closed_form.py)
        if not isinstance(sync, bool):
            raise TypeError(f"sync must be True or False, got {sync!r}")
        self.sync = sync
        self.momentum = momentum
        self.eps = eps
        aggregation = (
            tf.VariableAggregation.ONLY_FIRST_REPLICA if sync else tf.VariableAggregation.MEAN
        )
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")
        self.moving_mean = tf.Variable(
            tf.zeros([channels]), trainable=False, name="moving_mean", aggregation=aggregation
        )
        self.moving_variance = tf.Variable(
            tf.ones([channels]), trainable=False, name="moving_variance", aggregation=aggregation
        )
        if sync and impl == "builtin":
            # Build the Keras layer now, in the caller's context, rather than from a replica.
            builtin_sync.keras_sync_layer(channels, tf.float32, eps)

    def _training_fn(self):
        if self.sync:
            if self.impl == "custom":
                return core.sync_batch_norm_and_moments
            return builtin_sync.batch_norm_and_moments_keras_sync
        if self.impl == "custom":
            return functools.partial(core.batch_norm_and_moments, backward=self.backward)
        return builtin.fused_batch_norm_and_moments

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        if not training:
            fn = (
                core.batch_norm_inference
                if self.impl == "custom"
                else (builtin.batch_norm_inference_nn)
            )
            return fn(x, self.moving_mean, self.moving_variance, self.gamma, self.beta, self.eps)
        y, mean, variance = self._training_fn()(x, self.gamma, self.beta, self.eps)
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
    """Layer norm: per example over every axis but the first; per-channel gamma and beta.

    Needs no synchronization under tf.distribute: each example's statistics are its own, so a
    replica computes exactly what one device would for its examples.
    """

    def __init__(
        self,
        channels: int,
        *,
        impl: str = "custom",
        eps: float = 1e-3,
        backward: str = "closed_form",
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.impl = _check_impl(impl)
        self.backward = backward
        self.eps = eps
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        del training  # the same computation in training and inference
        if self.impl == "custom":
            return core.layer_norm(x, self.gamma, self.beta, self.eps, backward=self.backward)
        return builtin.layer_norm_keras(x, self.gamma, self.beta, self.eps)


class GroupNorm(tf.Module):
    """Group norm: per example over each group of channels (and all positions).

    Needs no synchronization under tf.distribute: the statistics are per example.
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        *,
        impl: str = "custom",
        eps: float = 1e-3,
        backward: str = "closed_form",
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.backward = backward
        if channels % groups:
            raise ValueError(f"groups ({groups}) must divide the channels ({channels})")
        self.impl = _check_impl(impl)
        self.groups = groups
        self.eps = eps
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        del training
        if self.impl == "custom":
            return core.group_norm(
                x, self.gamma, self.beta, self.groups, self.eps, backward=self.backward
            )
        return builtin.group_norm_keras(x, self.gamma, self.beta, self.groups, self.eps)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The group count used for a layer of n channels: the largest divisor of n <= limit."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
