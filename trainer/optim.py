"""Optimizers and learning-rate schedules as tf.Modules: explicit slot variables, checkpointable."""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf


class SGD(tf.Module):
    """SGD with momentum, PyTorch's form: m <- momentum * m + grad;  w <- w - lr * m.

    Each variable's update is one op, TensorFlow's fused ResourceApplyMomentum, which computes
    exactly these two float32 expressions in one pass (bitwise the same as the op-by-op form:
    tests/test_fast_loop.py) instead of seven ops and three passes over the variable; it is
    most of the update's cost at small batches. Mirrored variables (tf.distribute with several
    replicas), and `fused = False` (bench.loop's baseline), take the op-by-op form.
    """

    fused = True

    def __init__(self, variables: Sequence[tf.Variable], momentum: float = 0.9):
        super().__init__(name="sgd")
        self.momentum = momentum
        self.velocities = [
            tf.Variable(tf.zeros_like(v), trainable=False, name="velocity") for v in variables
        ]

    def apply(self, grads, variables, lr: tf.Tensor) -> None:
        for g, v, m in zip(grads, variables, self.velocities):
            if self.fused and not isinstance(v, tf.distribute.DistributedValues):
                tf.raw_ops.ResourceApplyMomentum(
                    var=v.handle,
                    accum=m.handle,
                    lr=tf.cast(lr, v.dtype),
                    grad=tf.cast(g, v.dtype),
                    momentum=tf.constant(self.momentum, v.dtype),
                    use_locking=False,
                    use_nesterov=False,
                )
            else:
                m.assign(self.momentum * m + g)
                v.assign_sub(lr * m)


class Adam(tf.Module):
    """Adam (Kingma & Ba 2015) with bias correction; beta1 0.9, beta2 0.999, eps 1e-7."""

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-7,
    ):
        super().__init__(name="adam")
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name="m") for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name="v") for v in variables]

    def apply(self, grads, variables, lr: tf.Tensor) -> None:
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float32)
        # Bias corrections folded into the step size, as in the paper's section 2.
        step = lr * tf.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        for g, var, m, v in zip(grads, variables, self.m, self.v):
            m.assign(self.beta1 * m + (1.0 - self.beta1) * g)
            v.assign(self.beta2 * v + (1.0 - self.beta2) * tf.square(g))
            var.assign_sub(step * m / (tf.sqrt(v) + self.eps))


def make_optimizer(name: str, variables, momentum: float):
    if name == "sgd":
        return SGD(variables, momentum)
    if name == "adam":
        return Adam(variables)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


def learning_rate(
    step: tf.Tensor, *, peak: float, total_steps: int, warmup_steps: int, schedule: str
) -> tf.Tensor:
    """The learning rate at `step` (0-based): linear warm-up, then constant or cosine to 0."""
    step = tf.cast(step, tf.float32)
    if schedule == "constant":
        lr = tf.constant(peak, tf.float32)
    elif schedule == "cosine":
        decay_steps = max(total_steps - warmup_steps, 1)
        progress = tf.clip_by_value((step - warmup_steps) / decay_steps, 0.0, 1.0)
        lr = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    else:
        raise ValueError(f"schedule must be constant or cosine, got {schedule!r}")
    if warmup_steps > 0:
        lr = tf.minimum(lr, peak * (step + 1.0) / warmup_steps)
    return lr


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for float16 mixed precision (as Keras' LossScaleOptimizer).

    float16 gradients below ~6e-8 round to 0; multiplying the loss by `scale` before the
    gradient (and dividing the gradients by it after) keeps them representable. The scale
    starts high; a step whose scaled gradients overflow is skipped and halves it, and every
    `period` consecutive good steps double it, so it stays near the largest safe value.
    """

    def __init__(self, initial: float = 2.0**15, period: int = 2000):
        super().__init__(name="loss_scale")
        self.period = period
        self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def update(self, grads_finite: tf.Tensor) -> None:
        """After a step: halve the scale on overflow, double it after `period` good steps."""
        grow = self.good_steps + 1 >= self.period

        def good():
            self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), self.good_steps + 1))
            self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale))
            return tf.constant(True)

        def overflow():
            self.good_steps.assign(0)
            self.scale.assign(tf.maximum(self.scale / 2.0, 1.0))
            return tf.constant(False)

        tf.cond(grads_finite, good, overflow)
