"""Precise batch norm for normlab's models and Keras models: population statistics recomputed
with the weights fixed (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", section 3.1).

A moving average mixes batch statistics computed with the weights of many past steps (and,
without bias correction, its initial 0 and 1). Precise BN runs the model in training mode over
training batches with the final weights, without updating anything, and sets each batch-norm
layer's statistics to the pooled mean and biased variance of the values the layer saw
(core.population: per time step for recurrent batch norm). Each layer's inputs are computed as
in training, with the batch statistics of the layers before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import keras
import tensorflow as tf

from normlab.core import population
from normlab.models.keras_layers import BatchNormalization
from normlab.models.norms import BatchNorm
from normlab.models.recurrent_norms import RecurrentBatchNorm

Statistics = dict  # {module: (mean, variance)}, float32, each of its moving statistics' shape


class PreciseStatistics:
    """Computes the population statistics of `modules` (normlab's BatchNorm,
    RecurrentBatchNorm or Keras BatchNormalization layers) by running `forward(x)`, the model's
    training-mode forward pass, over batches. Nothing is assigned or updated: while `forward`
    is traced, each module's `collector` is a list, so its training-mode call records its batch
    statistics instead of moving its averages; no gradient is taken.

    The traced function is kept, so computing again (before each evaluation) does not retrace.
    """

    def __init__(self, modules: list, forward: Callable[[tf.Tensor], object]):
        if not modules:
            raise ValueError("precise batch norm: the model has no normlab batch-norm layer")
        self.modules, self.forward = modules, forward
        self._collect = tf.function(self._statistics_of, autograph=False, reduce_retracing=True)

    def _statistics_of(self, x: tf.Tensor) -> list:
        for module in self.modules:
            module.collector = []
        try:
            self.forward(x)
            return [list(module.collector) for module in self.modules]
        finally:
            for module in self.modules:
                module.collector = None

    def __call__(self, batches: Iterable[tf.Tensor]) -> tuple[Statistics, int]:
        """({module: (mean, variance)}, examples): the pooled statistics over every batch,
        and the number of examples seen.

        Raises:
            ValueError: no batch, or a module that recorded nothing or statistics of another
                shape than its moving statistics (a sequence shorter than the trained one).
        """
        states = [population.empty(m.moving_mean.shape) for m in self.modules]
        examples = 0
        for x in batches:
            examples += int(tf.shape(x)[0])
            for i, records in enumerate(self._collect(x)):
                for mean, variance, count in records:
                    if mean.shape != self.modules[i].moving_mean.shape:
                        raise ValueError(
                            f"precise batch norm: {self.modules[i].name} computed statistics of "
                            f"shape {mean.shape.as_list()}, its moving statistics are "
                            f"{self.modules[i].moving_mean.shape.as_list()}: give sequences "
                            "of the trained length"
                        )
                    states[i] = population.merge(states[i], mean, variance, count)
        if examples == 0:
            raise ValueError("precise batch norm: no batch to compute the statistics from")
        for module, state in zip(self.modules, states):
            if float(state.count) == 0:
                raise ValueError(
                    f"precise batch norm: {module.name} computed no batch statistics (a Keras "
                    "layer with trainable=False runs in inference mode: make it trainable)"
                )
        return {m: population.finalize(s) for m, s in zip(self.modules, states)}, examples


def assign(statistics: Statistics) -> None:
    """Writes each module's (mean, variance) into its moving_mean / moving_variance."""
    for module, (mean, variance) in statistics.items():
        module.moving_mean.assign(mean)
        module.moving_variance.assign(variance)


@contextlib.contextmanager
def using(statistics: Statistics):
    """Within the block, the modules' moving statistics are `statistics`; afterwards (also on
    an error) they are what they were, so the moving averages go on as if nothing happened."""
    saved = {
        m: (tf.identity(m.moving_mean), tf.identity(m.moving_variance)) for m in statistics
    }
    assign(statistics)
    try:
        yield
    finally:
        assign(saved)


def batch_norm_modules(model: tf.Module) -> list:
    """normlab's batch-norm modules (BatchNorm, RecurrentBatchNorm) inside a tf.Module model."""
    return [m for m in model.submodules if isinstance(m, (BatchNorm, RecurrentBatchNorm))]


def for_model(model: tf.Module) -> PreciseStatistics:
    """PreciseStatistics of a normlab model (the CNN, the LSTM): `model(x, training=True)`."""
    return PreciseStatistics(batch_norm_modules(model), lambda x: model(x, training=True))


def _images(batch):
    """x of a batch given as x, (x, y) or (x, y, sample_weight)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def recompute_batch_norm_statistics(
    model: keras.Model, dataset: Iterable, examples: int | None = 1000
) -> int:
    """Precise BN for a Keras model: sets the moving_mean and moving_variance of every normlab
    BatchNormalization layer in `model` to the pooled statistics of the values it sees when
    `model(x, training=True)` runs over `dataset`'s batches with the weights fixed.

    Nothing else changes: no weight, no moving_count; layers are not updated while the
    batches run. Use training data in batches of the training batch size: the statistics are
    those of training-mode inputs, which depend on the batch size through the layers before.

    Args:
        model: a built Keras model containing normlab.models.BatchNormalization layers.
        dataset: batches x, (x, y) or (x, y, sample_weight): a tf.data.Dataset or any iterable.
        examples: stop after the batch that reaches this many examples (Wu & Johnson use
            10^3 to 10^4); None: the whole dataset. A shorter dataset is used whole.

    Returns:
        The number of examples the statistics were computed from.

    Raises:
        ValueError: no normlab BatchNormalization layer, a keras.layers.BatchNormalization
            (it would update its moving statistics in training mode), or an empty dataset.
    """
    if examples is not None and (isinstance(examples, bool) or not int(examples) >= 1):
        raise ValueError(f"examples must be a positive int or None, got {examples!r}")
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    keras_bn = [layer.name for layer in layers if type(layer) is keras.layers.BatchNormalization]
    if keras_bn:
        raise ValueError(
            f"recompute_batch_norm_statistics: {', '.join(keras_bn)} are Keras' own "
            "BatchNormalization, which would move their moving averages in training mode; "
            "use normlab.models.BatchNormalization (the same weights and arguments)."
        )
    modules = [layer for layer in layers if isinstance(layer, BatchNormalization)]
    if not modules:
        raise ValueError(
            "recompute_batch_norm_statistics: the model has no normlab BatchNormalization layer"
        )
    precise = PreciseStatistics(modules, lambda x: model(x, training=True))

    def batches():
        seen = 0
        for batch in dataset:
            x = tf.convert_to_tensor(_images(batch))
            yield x
            seen += int(tf.shape(x)[0])
            if examples is not None and seen >= examples:
                return

    statistics, seen = precise(batches())
    assign(statistics)
    return seen
