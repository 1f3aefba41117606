"""Recurrent batch norm (Cooijmans et al. 2016): batch statistics and moving averages per time step.

An LSTM normalizes the same projection (W_h h_{t-1}, W_x x_t, c_t) at every time step. Cooijmans
et al. (arXiv:1603.09025, section 3) found that sharing one set of statistics across time
"severely degrades performance", because the activations' distribution changes during the
initial transient of a sequence; they keep separate statistics for each time step and use the
statistics of the last trained step for any step beyond the longest training sequence.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf

from normlab import core
from normlab.core import registry
from normlab.models.norms import (
    check_moving_average,
    global_statistics,
    update_counter,
    update_moving,
)

# Cooijmans et al. (section 4): gain 1 saturates the gates and the gradient through time
# vanishes; 0.1 keeps it flowing.
RECURRENT_GAIN = 0.1


class RecurrentBatchNorm(tf.Module):
    """Batch norm over the batch axis with separate statistics for each time step.

    Time step t of a sequence is normalized with its own statistics:

        training:   y_t = (x_t - mean_t) * rsqrt(var_t + eps) * gamma + beta
                    with the batch's mean_t and biased var_t over the N examples, and
                    moving[t] <- moving[t] * momentum + batch_t * (1 - momentum)
        inference:  y_t = (x_t - moving_mean[s]) * rsqrt(moving_variance[s] + eps) * gamma + beta
                    with s = min(t, steps - 1): steps beyond the trained length use the last
                    step's statistics (Cooijmans et al., section 3).

    gamma and beta are shared by every time step, as the recurrent weights are (Cooijmans et
    al., equations 6-8: gamma_h, gamma_x, gamma_c and beta_c carry no time index); only the
    statistics are per step. gamma starts at 0.1 (their section 4). With center=False there is
    no beta (it is 0): Cooijmans et al. set beta_h = beta_x = 0 "to avoid unnecessary
    redundancy", the LSTM's gate bias b playing that role; the cell state's norm keeps its beta_c.

    The moving statistics are [steps, C] float32, trainable=False, and change only in training:
    `normalize` returns each step's batch statistics and `update` folds a whole sequence's into
    the moving averages with one assignment per variable (under tf.distribute: one aggregation
    per sequence, not one per step). `__call__` does both for a sequence given at once.
    moving_average="bias_corrected" keeps a count of updates per step (moving_count, [steps]
    int64) and updates step t by core.bias_corrected_update with its own count, as
    models.BatchNorm does. While `collector` is a list (models.population, precise batch norm),
    `update` appends (mean, variance, N) to it instead ([L, C] statistics of N examples).

    The module is given its functions, as models.BatchNorm is: `train_fn(x, gamma, beta, eps)
    -> (y, mean, variance)` (normlab's, a built-in, or a synchronized variant) and
    `inference_fn(x, mean, variance, gamma, beta, eps) -> y`. Under tf.distribute, create it in
    `strategy.scope()`; the moving statistics aggregate as models.BatchNorm's do:
    ONLY_FIRST_REPLICA when synchronized (every replica holds the global batch's statistics),
    MEAN of the per-replica updates otherwise.

    Args:
        channels: C, the size of the last axis.
        steps: the trained sequence length: the number of time steps with statistics of
            their own.
        train_fn, inference_fn: as above.
        center: whether the norm has a learned beta.
        gain: gamma's initial value.
        momentum: in [0, 1), Keras' convention.
        eps: > 0, inside the root.
        synchronized: train_fn computes the global batch's statistics under tf.distribute.
        moving_average: "plain" (Keras') or "bias_corrected" (Adam's correction).
        name: the module's name.
    """

    def __init__(
        self,
        channels: int,
        steps: int,
        *,
        train_fn: Callable,
        inference_fn: Callable,
        center: bool = True,
        gain: float = RECURRENT_GAIN,
        momentum: float = 0.99,
        eps: float = 1e-3,
        synchronized: bool = False,
        moving_average: str = "plain",
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_moving_average(moving_average)
        for arg, value in (("channels", channels), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if not isinstance(synchronized, bool):
            raise TypeError(f"synchronized must be True or False, got {synchronized!r}")
        if isinstance(momentum, bool) or not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.channels, self.steps = channels, steps
        self.momentum, self.eps = float(momentum), eps
        self.train_fn, self.inference_fn = train_fn, inference_fn
        self.moving_average, self.collector = moving_average, None
        aggregation = (
            tf.VariableAggregation.ONLY_FIRST_REPLICA
            if synchronized
            else tf.VariableAggregation.MEAN
        )
        self.gamma = tf.Variable(tf.fill([channels], float(gain)), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta") if center else None
        self.moving_mean = tf.Variable(
            tf.zeros([steps, channels]),
            trainable=False,
            name="moving_mean",
            aggregation=aggregation,
        )
        self.moving_variance = tf.Variable(
            tf.ones([steps, channels]),
            trainable=False,
            name="moving_variance",
            aggregation=aggregation,
        )
        self.moving_count = update_counter([steps], moving_average)

    def normalize(
        self, x: tf.Tensor, step: int, *, training: bool
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor] | None]:
        """Normalizes time step `step` ([N, C] x) or steps step, ..., step + S - 1 ([N, S, C]).

        Several steps at once are one call of the functions on [N, S*C] with gamma and beta
        repeated S times: batch norm reduces over N only, so each (step, channel) column gets
        its own statistics, exactly as S separate calls would give.

        Returns:
            (y with x's shape and dtype, the statistics): in training (mean, variance), each
            [S, C] float32 ([1, C] for one step), for `update`; in inference None.

        Raises:
            ValueError: x not [N, C] or [N, S, C] with this module's C, a negative step, or
                in training a step at or beyond `steps` (it would have no moving statistics).
        """
        x = tf.convert_to_tensor(x)
        if x.shape.rank not in (2, 3) or x.shape[-1] != self.channels:
            raise ValueError(
                f"{self.name}: x must be [N, {self.channels}] (one time step) or "
                f"[N, S, {self.channels}] (S steps), got shape {x.shape.as_list()}"
            )
        count = 1 if x.shape.rank == 2 else x.shape[1]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0 or count is None:
            raise ValueError(
                f"{self.name}: step must be an int >= 0 and S static, got step={step!r}, "
                f"x of shape {x.shape.as_list()}"
            )
        flat = x if x.shape.rank == 2 else tf.reshape(x, [-1, count * self.channels])
        gamma, beta = self._repeated(self.gamma, count), self._repeated(self._beta(), count)
        if training:
            if step + count > self.steps:
                raise ValueError(
                    f"{self.name}: training on time step {step + count - 1}, but statistics are "
                    f"kept for {self.steps} steps (the trained sequence length); build the "
                    "model for the longest training sequence."
                )
            y, mean, variance = self.train_fn(flat, gamma, beta, self.eps)
            stats = (tf.reshape(mean, [count, -1]), tf.reshape(variance, [count, -1]))
        else:
            rows = [min(t, self.steps - 1) for t in range(step, step + count)]
            mean = tf.reshape(tf.gather(self.moving_mean, rows), [-1])
            variance = tf.reshape(tf.gather(self.moving_variance, rows), [-1])
            y, stats = self.inference_fn(flat, mean, variance, gamma, beta, self.eps), None
        return (y if x.shape.rank == 2 else tf.reshape(y, tf.shape(x))), stats

    def update(self, mean: tf.Tensor, variance: tf.Tensor, examples=None) -> None:
        """Moves the moving statistics of steps 0, ..., L - 1 towards a sequence's batch
        statistics (mean and variance [L, C], L <= steps); the other steps are unchanged.

            plain:          moving[t] <- moving[t] * momentum + batch[t] * (1 - momentum)
            bias_corrected: moving[t] <- core.bias_corrected_update(moving[t], batch[t],
                                          momentum, count[t] + 1);  count[t] += 1

        for t < L. `examples` (N) is what a collector records with the statistics; without it
        no collector may be set.
        """
        length = mean.shape[0]
        if length is None or not 1 <= length <= self.steps or variance.shape[0] != length:
            raise ValueError(
                f"{self.name}: update needs mean and variance of the same 1 to {self.steps} "
                f"steps, got shapes {mean.shape.as_list()} and {variance.shape.as_list()}"
            )
        # Bookkeeping, not part of the function being differentiated.
        mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
        if self.collector is not None:
            if examples is None:
                raise ValueError(f"{self.name}: collecting statistics needs their example count")
            self.collector.append((mean, variance, examples))
            return
        update_moving(self, mean, variance, rows=length)

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        """A whole sequence [N, S, C] from step 0: normalized, and in training `update`d."""
        y, stats = self.normalize(x, 0, training=training)
        if stats is not None:
            self.update(*stats, examples=tf.shape(x)[0])
        return y

    def _beta(self) -> tf.Tensor:
        return self.beta if self.beta is not None else tf.zeros([self.channels])

    @staticmethod
    def _repeated(param, count: int) -> tf.Tensor:
        return param if count == 1 else tf.tile(param, [count])


def recurrent_batch_norm(
    norm: registry.Norm,
    channels: int,
    steps: int,
    *,
    impl: str = "custom",
    center: bool = True,
    eps: float | None = None,
    momentum: float = 0.99,
    backward: str = "closed_form",
    synchronized: bool = False,
    gain: float = RECURRENT_GAIN,
    moving_average: str = "plain",
    name: str | None = None,
) -> RecurrentBatchNorm:
    """RecurrentBatchNorm with the functions of registry entry `norm` (one with moving
    statistics), chosen as models.make_norm chooses them: impl "custom" (normlab's) or
    "builtin" (the entry's first built-in), its synchronized function if `synchronized`, and
    `backward` for closed-form implementations."""
    if not norm.moving_statistics:
        raise ValueError(f"{norm.name} norm keeps no moving statistics: use models.make_norm")
    implementation = norm.implementation(impl)
    synchronized = global_statistics(synchronized)
    train_fn = implementation.synchronized if synchronized else implementation.with_moments
    if implementation.closed_form:
        train_fn = functools.partial(train_fn, backward=backward)
    return RecurrentBatchNorm(
        channels,
        steps,
        train_fn=train_fn,
        inference_fn=implementation.inference,
        center=center,
        momentum=momentum,
        eps=norm.eps if eps is None else eps,
        synchronized=synchronized,
        gain=gain,
        moving_average=moving_average,
        name=name,
    )
