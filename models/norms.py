"""Normalization modules: explicit variables around the function they are given.

A module does not know which implementation it runs: it receives the function (normlab's,
a TensorFlow built-in, or the cross-replica variant of batch norm) and owns the variables and
the bookkeeping. `make_norm` picks the functions from the registry (core/registry.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf

from normlab import core
from normlab.core import registry


class Normalization(tf.Module):
    """A norm whose statistics are per example (layer, group, RMS norm): the same computation
    in training and inference, so `training` is accepted and ignored.

    Needs no synchronization under tf.distribute: each example's statistics are its own, so a
    replica computes exactly what one device would for its examples.

    Args:
        channels: the size of the last axis; every parameter is one value per channel.
        fn: `fn(x, *params) -> y`, e.g. `functools.partial(core.layer_norm, eps=1e-3)`.
        params: the parameters fn takes after x, with their initial values.
        name: the module's name (summaries and checkpoints use it).
    """

    def __init__(
        self,
        channels: int,
        fn: Callable,
        params: tuple[registry.Param, ...] = (registry.Param("gamma", 1.0),),
        *,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.fn = fn
        self.params = [
            tf.Variable(tf.fill([channels], float(p.initial)), name=p.name) for p in params
        ]
        for p, variable in zip(params, self.params):
            setattr(self, p.name, variable)

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        del training  # the same computation in training and inference
        return self.fn(x, *self.params)


class BatchNorm(tf.Module):
    """Batch norm over every axis but the last, with float32 moving statistics.

    Training: y uses the batch's mean and biased variance, and the moving statistics move
    towards them: moving = moving * momentum + batch * (1 - momentum) with
    moving_average="plain" (Keras'); with "bias_corrected", by core.bias_corrected_update with
    t = moving_count + 1 (Adam's correction: the first update takes the batch's statistics, and
    moving_count, a checkpointed int64, counts the updates). Inference: y uses the moving
    statistics, which do not change. `training` is a required argument.

    While `collector` is a list (models.population sets it for precise batch norm), a
    training-mode call appends (mean, variance, count) of its batch statistics to it instead of
    moving anything: count is the number of values per channel (N, or N*H*W).

    The module is given its functions: `train_fn(x, gamma, beta, eps) -> (y, mean, variance)`
    and `inference_fn(x, mean, variance, gamma, beta, eps) -> y` (core's by default; a built-in,
    or core.sync_batch_norm_and_moments for synchronized batch norm: like Sonnet's
    CrossReplicaBatchNorm, only how the statistics are computed changes).

    Under tf.distribute, create the module inside `strategy.scope()`; the moving statistics
    are then mirrored variables, assigned from inside `strategy.run` with an aggregation that
    says how the replicas' values combine:

    * synchronized=True (train_fn computes the global batch's statistics):
      `ONLY_FIRST_REPLICA`: every replica holds the same values, so the first one's is exact.
    * synchronized=False (each replica's own statistics): `MEAN` of the per-replica updates.

    Outside a strategy the aggregation has no effect.
    """

    def __init__(
        self,
        channels: int,
        *,
        momentum: float = 0.99,
        eps: float = 1e-3,
        train_fn: Callable = core.batch_norm_and_moments,
        inference_fn: Callable = core.batch_norm_inference,
        synchronized: bool = False,
        moving_average: str = "plain",
        name: str | None = None,
    ):
        super().__init__(name=name)
        if not isinstance(synchronized, bool):
            raise TypeError(f"synchronized must be True or False, got {synchronized!r}")
        check_moving_average(moving_average)
        self.momentum = momentum
        self.eps = eps
        self.moving_average = moving_average
        self.collector = None
        self.train_fn = train_fn
        self.inference_fn = inference_fn
        aggregation = (
            tf.VariableAggregation.ONLY_FIRST_REPLICA
            if synchronized
            else tf.VariableAggregation.MEAN
        )
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")
        self.moving_mean = tf.Variable(
            tf.zeros([channels]), trainable=False, name="moving_mean", aggregation=aggregation
        )
        self.moving_variance = tf.Variable(
            tf.ones([channels]), trainable=False, name="moving_variance", aggregation=aggregation
        )
        self.moving_count = update_counter([], moving_average)

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        if not training:
            return self.inference_fn(
                x, self.moving_mean, self.moving_variance, self.gamma, self.beta, self.eps
            )
        y, mean, variance = self.train_fn(x, self.gamma, self.beta, self.eps)
        # The moving averages are bookkeeping, not part of the function being differentiated.
        mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
        if self.collector is not None:
            count = tf.reduce_prod(tf.shape(x)[:-1])
            self.collector.append((mean, variance, count))
            return y
        update_moving(self, mean, variance)
        return y


def check_moving_average(moving_average) -> None:
    if moving_average not in core.MOVING_AVERAGES:
        raise ValueError(
            f"moving_average must be one of {', '.join(core.MOVING_AVERAGES)}, "
            f"got {moving_average!r}"
        )


def update_counter(shape, moving_average: str) -> tf.Variable | None:
    """The count of moving-average updates a bias-corrected average needs (int64 zeros of
    `shape`, checkpointed as moving_count), None for the plain average. Every replica counts
    the same updates, so the first replica's value is exact."""
    if moving_average != "bias_corrected":
        return None
    return tf.Variable(
        tf.zeros(shape, tf.int64),
        trainable=False,
        name="moving_count",
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


def update_moving(module, mean: tf.Tensor, variance: tf.Tensor, rows: int | None = None) -> None:
    """Moves `module`'s moving_mean / moving_variance towards the batch's (mean, variance) by
    its moving_average rule: all of them, or (rows given) their first `rows` rows only, each row
    with its own count (per-time-step statistics). One assignment per variable."""
    counter = module.moving_count
    count = None if counter is None else tf.convert_to_tensor(counter)
    if count is not None:
        count = (count if rows is None else count[:rows]) + 1
    for moving, batch in ((module.moving_mean, mean), (module.moving_variance, variance)):
        value = tf.convert_to_tensor(moving)
        if count is None:
            new = core.moving_average_update(value[:rows], batch, module.momentum)
        else:  # one count per row: [rows, 1] against [rows, C]; a scalar against [C]
            t = count if count.shape.rank == 0 else count[:, tf.newaxis]
            new = core.bias_corrected_update(value[:rows], batch, module.momentum, t)
        moving.assign(_with_rest(new, value, rows))
    if counter is not None:
        counter.assign(_with_rest(count, tf.convert_to_tensor(counter), rows))


def _with_rest(new: tf.Tensor, value: tf.Tensor, rows: int | None) -> tf.Tensor:
    """`new` (the first `rows` rows) followed by value's other rows."""
    if rows is None or rows == value.shape[0]:
        return new
    return tf.concat([new, value[rows:]], axis=0)


def global_statistics(synchronized: bool) -> bool:
    """Whether batch statistics must be taken over several replicas: asked for, and the current
    tf.distribute strategy (the one whose scope builds the model) has more than one. On one
    replica the local batch is the global batch, so the plain functions apply (normlab's
    closed-form backward; TensorFlow's fused kernel for the built-in)."""
    return synchronized and tf.distribute.get_strategy().num_replicas_in_sync > 1


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The group count used for a layer of n channels: the largest divisor of n <= limit."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def make_norm(
    norm: registry.Norm,
    channels: int,
    *,
    impl: str = "custom",
    eps: float | None = None,
    groups: int = 8,
    momentum: float = 0.99,
    backward: str = "closed_form",
    synchronized: bool = False,
    moving_average: str = "plain",
    name: str | None = None,
) -> tf.Module:
    """The module applying registry entry `norm` to activations with `channels` channels.

    Args:
        norm: a registry entry whose target is activations.
        impl: "custom" (normlab's functions) or "builtin" (the entry's first built-in).
        eps: inside the root; None: the norm's own default.
        groups: for grouped norms, the largest divisor of `channels` not above it is used.
        momentum: moving-average momentum of norms with moving statistics.
        backward: the gradient of normlab's closed-form norms (core/closed_form.py).
        synchronized: under tf.distribute with several replicas, statistics of the global
            batch (batch norm); ignored on one replica (global_statistics).
        moving_average: "plain" or "bias_corrected" (norms with moving statistics; BatchNorm).
    """
    if norm.target != registry.ACTIVATIONS:
        raise ValueError(f"{norm.name} norm applies to kernels, not activations")
    implementation = norm.implementation(impl)
    eps = norm.eps if eps is None else eps
    if norm.moving_statistics:
        synchronized = global_statistics(synchronized)
        train_fn = implementation.synchronized if synchronized else implementation.with_moments
        if implementation.closed_form:
            train_fn = functools.partial(train_fn, backward=backward)
        return BatchNorm(
            channels,
            momentum=momentum,
            eps=eps,
            train_fn=train_fn,
            inference_fn=implementation.inference,
            synchronized=synchronized,
            moving_average=moving_average,
            name=name,
        )
    group_count = largest_divisor_at_most(channels, groups) if norm.grouped else None
    fn = norm.bind(implementation, eps=eps, groups=group_count, backward=backward)
    module = Normalization(channels, fn, norm.params, name=name)
    module.groups = group_count
    return module
