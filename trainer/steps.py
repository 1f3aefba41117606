"""The compiled training and evaluation steps: a batch in, a flat dict keyed by tags out.

`TrainStep(images, labels, collect)` runs forward, loss, backward and the optimizer update
(on every replica under tf.distribute) and returns {tag: value} with the tags of
trainer/summaries.py, ready for `MetricWriter.write`: the training batch's loss and accuracy,
the learning rate and the global gradient norm always; with `collect` >= SCALARS also each
layer's gradient norm, each hidden layer's activation mean/std before and after its norm and
each variable's norm; with
HISTOGRAMS also the weights, gradients and activations as tensors (histograms).

A step whose loss or gradient is not finite applies nothing: the caller sees it in the dict
(`is_finite`) and stops with the last good state. Under float16 mixed precision with dynamic
loss scaling, a step whose scaled gradients overflow is skipped and lowers the scale (that is
how loss scaling finds its scale, not an error); it still counts as a step, so the data order
stays a function of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from normlab.trainer import summaries as tags

# What a step collects besides loss, accuracy, learning rate and the global gradient norm.
NOTHING, SCALARS, HISTOGRAMS = 0, 1, 2
# TrainStep.loop's results (not summary tags: the loop turns them into the log window).
LOOP_STEPS, LOOP_LOSS, LOOP_ACCURACY, LOOP_FINITE = "steps", "loss_sum", "accuracy_sum", "finite"


def layer_variables(model: tf.Module) -> list[tuple[str, str, tf.Variable]]:
    """(layer, variable name, variable) for every trainable variable, in forward order."""
    return [
        (layer, v.name.split(":")[0], v)
        for layer, module in model.named_layers()
        for v in module.trainable_variables
    ]


def is_finite(metrics: dict) -> bool:
    """Whether the step's loss and gradient were finite (or a loss-scale overflow skipped it):
    whether training may go on."""
    if not math.isfinite(float(metrics[tags.LOSS])):
        return False
    overflow = float(metrics.get(tags.LOSS_SCALE_OVERFLOW, 0.0)) > 0
    return overflow or math.isfinite(float(metrics[tags.GRAD_NORM_GLOBAL]))


def _moments_of(t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    mean, variance = tf.nn.moments(tf.cast(t, tf.float32), axes=list(range(t.shape.rank)))
    return mean, tf.sqrt(variance)


class TrainStep:
    """One optimization step of `model` on a global batch, compiled with tf.function.

    Args:
        model: a module with `forward(x, training=, tap=)` and `named_layers()` (models/).
        optimizer: `apply(grads, variables, lr)` (trainer/optim.py).
        step: the int64 step counter variable; incremented by each applied step.
        learning_rate: `learning_rate(step) -> lr` (a schedule).
        global_batch_size: the loss is the sum over the replica's examples divided by this, so
            the replicas' gradients sum to the global batch's mean gradient.
        strategy: the tf.distribute strategy the variables were created under.
        loss_scale: under float16 mixed precision, an optim.DynamicLossScale: the loss is
            multiplied by its scale before the gradient and the gradients divided by it after
            (keeps small gradients from underflowing to 0 in float16); None otherwise.
    """

    def __init__(
        self,
        model: tf.Module,
        optimizer,
        step: tf.Variable,
        learning_rate: Callable[[tf.Tensor], tf.Tensor],
        global_batch_size: int,
        strategy: tf.distribute.Strategy | None = None,
        loss_scale=None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.step = step
        self.learning_rate = learning_rate
        self.global_batch_size = global_batch_size
        self.strategy = strategy or tf.distribute.get_strategy()
        self.loss_scale = loss_scale
        self.named = layer_variables(model)
        self.variables = [v for _, _, v in self.named]
        # autograph=False: the step's control flow is Python on static values (traced once per
        # `collect` level) or explicit tf.cond / tf.while_loop; nothing for autograph to convert.
        self._compiled = tf.function(self._step, autograph=False)
        self._compiled_loop = tf.function(
            lambda iterator, n: self._loop(iterator.get_next, n), autograph=False
        )
        self._source, self._compiled_source_loop = None, None

    def __call__(self, images, labels, collect: int = NOTHING) -> dict[str, tf.Tensor]:
        return self._compiled(images, labels, collect)

    def loop(self, iterator, n: int) -> dict[str, tf.Tensor]:
        """Up to n steps on the next n batches of `iterator` in one compiled call, collecting
        nothing, with no host round trip between steps. Stops after the first step whose
        loss or gradient is not finite (that step applies nothing, like a single step).

        `iterator` is a tf.data iterator, or an object whose `next_in_graph()` makes the next
        batch with ops inside the loop after `prepare(n)` on the host (data.InGraphBatches: no
        iterator call per step); the loop is traced once per such object.

        Returns {LOOP_STEPS: steps run (the last of them the non-finite one, if any),
        LOOP_FINITE: whether every step was finite, LOOP_LOSS / LOOP_ACCURACY: sums over the
        steps run}. Each step is the graph of `__call__(images, labels)`, so n steps here and
        n single steps give the same weights (bitwise under op determinism).
        """
        n = tf.constant(n, tf.int32)
        if not hasattr(iterator, "next_in_graph"):
            return self._compiled_loop(iterator, n)
        if self._source is not iterator:
            self._source = iterator
            self._compiled_source_loop = tf.function(
                lambda n: self._loop(iterator.next_in_graph, n), autograph=False
            )
        iterator.prepare(int(n))
        return self._compiled_source_loop(n)

    def _loop(self, get_next, n):
        def body(i, loss, accuracy, finite):
            images, labels = get_next()
            metrics = self._step(images, labels, NOTHING)
            ok = tf.math.is_finite(metrics[tags.LOSS])
            grads_ok = tf.math.is_finite(metrics[tags.GRAD_NORM_GLOBAL])
            if tags.LOSS_SCALE_OVERFLOW in metrics:  # an overflow is a step, not a failure
                grads_ok |= metrics[tags.LOSS_SCALE_OVERFLOW] > 0
            return (
                i + 1,
                loss + metrics[tags.LOSS],
                accuracy + metrics[tags.ACCURACY],
                ok & grads_ok,
            )

        def more(i, loss, accuracy, finite):
            return (i < n) & finite

        zero = tf.constant(0.0)
        steps, loss, accuracy, finite = tf.while_loop(
            more, body, (tf.constant(0, tf.int32), zero, zero, tf.constant(True))
        )
        return {LOOP_STEPS: steps, LOOP_LOSS: loss, LOOP_ACCURACY: accuracy, LOOP_FINITE: finite}

    def _replica(self, images, labels, collect: int):
        """One replica's share: loss over the global batch size, gradients, correct count."""
        # The name scopes are the parts bench.profile reports.
        with tf.GradientTape() as tape, tf.name_scope("forward"):
            logits, taps = self.model.forward(images, training=True, tap=collect >= SCALARS)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(per_example) / self.global_batch_size
            scale = self.loss_scale.scale if self.loss_scale else None
            scaled = loss if scale is None else loss * scale
        with tf.name_scope("backward"):
            grads = tape.gradient(scaled, self.variables)
            if scale is not None:
                grads = [g / scale for g in grads]
        predictions = tf.argmax(logits, -1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
        stats = {}
        for name, t in taps.items():
            layer, when = name.split("/")
            mean, std = _moments_of(t)
            stats[tags.activation(layer, when, "mean")] = mean
            stats[tags.activation(layer, when, "std")] = std
        return loss, correct, grads, stats, taps

    def _step(self, images, labels, collect: int):
        s, total = self.strategy, tf.distribute.ReduceOp.SUM
        loss, correct, grads, stats, taps = s.run(self._replica, args=(images, labels, collect))
        loss = s.reduce(total, loss, axis=None)
        grads = [s.reduce(total, g, axis=None) for g in grads]
        lr = self.learning_rate(self.step)
        # Half the squared norm of each gradient, one op and one pass over it (l2_loss) where
        # reduce_sum(square(g)) takes two ops and three passes: at small batches the gradient
        # norm of the large dense kernel costs as much as a layer.
        halves = [tf.nn.l2_loss(g) for g in grads]
        metrics = {
            tags.LOSS: loss,
            tags.ACCURACY: s.reduce(total, correct, axis=None) / self.global_batch_size,
            tags.LEARNING_RATE: lr,
            tags.GRAD_NORM_GLOBAL: tf.sqrt(2.0 * tf.add_n(halves)),
        }
        if collect >= SCALARS:
            by_layer: dict[str, list] = {}
            for (layer, _, _), half in zip(self.named, halves):
                by_layer.setdefault(layer, []).append(half)
            metrics.update(
                {tags.grad_norm(k): tf.sqrt(2.0 * tf.add_n(v)) for k, v in by_layer.items()}
            )
            # The replicas' activation statistics, averaged.
            mean = tf.distribute.ReduceOp.MEAN
            metrics.update({k: s.reduce(mean, v, axis=None) for k, v in stats.items()})
            metrics.update(
                {tags.param_norm(layer, name): tf.norm(v) for layer, name, v in self.named}
            )
        if collect >= HISTOGRAMS:
            for (layer, name, v), g in zip(self.named, grads):
                metrics[tags.weights_histogram(layer, name)] = tf.identity(v)
                metrics[tags.gradients_histogram(layer, name)] = g
            for key, t in taps.items():  # the first replica's activations
                layer, when = key.split("/")
                local = s.experimental_local_results(t)[0]
                metrics[tags.activations_histogram(layer, when)] = tf.cast(local, tf.float32)
        grads_finite = tf.math.is_finite(metrics[tags.GRAD_NORM_GLOBAL])
        finite = tf.math.is_finite(loss) & grads_finite

        overflow = tf.constant(False)
        if self.loss_scale is not None:
            overflow = tf.math.is_finite(loss) & ~grads_finite & (self.loss_scale.scale > 1.0)
            metrics[tags.LOSS_SCALE] = tf.identity(self.loss_scale.scale)
            metrics[tags.LOSS_SCALE_OVERFLOW] = tf.cast(overflow, tf.float32)
            self.loss_scale.update(grads_finite)

        def apply():
            with tf.name_scope("update"):  # bench.profile's optimizer part
                self.optimizer.apply(grads, self.variables, lr)
                self.step.assign_add(1)
            return tf.constant(True)

        def skip():
            # A loss-scale overflow still used its batch; a non-finite step changes nothing
            # (the caller stops with the last good state).
            self.step.assign_add(tf.cast(overflow, tf.int64))
            return tf.constant(False)

        tf.cond(finite, apply, skip)
        return metrics


class EvalStep:
    """Inference-mode loss sum and predictions of one batch, compiled with tf.function."""

    def __init__(self, model: tf.Module):
        self.model = model
        self._compiled = tf.function(self._step, autograph=False)

    def __call__(self, images, labels) -> dict[str, tf.Tensor]:
        return self._compiled(images, labels)

    def _step(self, images, labels):
        logits = self.model(images, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return {
            "loss_sum": tf.reduce_sum(losses),
            "predictions": tf.argmax(logits, -1, output_type=tf.int32),
        }


def evaluate(eval_step: EvalStep, dataset, labels: np.ndarray, num_classes: int) -> dict:
    """Loss, accuracy and per-class accuracy of a whole split (every example once).

    Returns {"loss", "accuracy", "per_class_accuracy", "examples", "predictions"}, or {} for an
    empty split.
    """
    if len(labels) == 0:
        return {}
    loss_sum, predictions = 0.0, []
    for images, batch_labels in dataset:
        out = eval_step(images, batch_labels)
        loss_sum += float(out["loss_sum"])
        predictions.append(out["predictions"].numpy())
    predictions = np.concatenate(predictions)
    labels = np.asarray(labels)
    correct = predictions == labels
    per_class = [
        float(correct[labels == k].mean()) if np.any(labels == k) else float("nan")
        for k in range(num_classes)
    ]
    return {
        "loss": loss_sum / len(labels),
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "examples": int(len(labels)),
        "predictions": predictions,
    }
